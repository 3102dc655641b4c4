"""``--policy NAME[:opt=value,...][+NAME...]``: a policy spec, parsed and checked against the
registry (names, options and their types, composition of policies of different kinds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmbench.errors import ConfigError
from mmbench.host.contracts import implemented_hooks
from mmbench.host.manager import Host


@dataclass(frozen=True)
class PolicySpec:
    """``NAME`` or ``NAME:opt=value,opt=value`` as typed after ``--policy``."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    # policies composed with this one (``zap-slot+lru-scan``): each answers other hooks
    also: tuple[PolicySpec, ...] = ()

    @property
    def label(self) -> str:
        own = self.name
        if self.options:
            own += ":" + ",".join(f"{k}={_fmt(v)}" for k, v in self.options)
        return "+".join([own, *(p.label for p in self.also)])

    @property
    def parts(self) -> tuple[PolicySpec, ...]:
        return (PolicySpec(self.name, self.options), *self.also)


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _convert_option(name: str, key: str, raw: str, default: Any) -> Any:
    field_name = f"--policy {name}:{key}"
    if isinstance(default, bool):
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(field_name, f"expected true or false, got {raw!r}")
    try:
        return type(default)(raw)
    except ValueError:
        raise ConfigError(field_name, f"expected {type(default).__name__}, got {raw!r}") from None


def parse_policy(text: str, host: Host) -> PolicySpec:
    """``NAME[:opts]`` or several composed with ``+`` (one memslot, one reclaim policy)."""
    first, *rest = [_parse_one(t, host) for t in text.split("+")]
    if not rest:
        return first
    seen: dict[str, str] = {}
    for p in (first, *rest):
        for hook in policy_hooks(host.registry.get("policy", p.name)):
            if hook in seen:
                raise ConfigError(
                    "--policy",
                    f"{seen[hook]!r} and {p.name!r} both answer {hook}; compose policies of"
                    " different kinds (e.g. zap-slot+lru-scan)",
                )
            seen[hook] = p.name
    return PolicySpec(first.name, first.options, tuple(rest))


def policy_hooks(cls: Any) -> list[str]:
    """The event hooks a policy class implements (with ``@hookimpl``)."""
    return [n for n in implemented_hooks(cls) if not n.startswith("mmbench_register_")]


def _parse_one(text: str, host: Host) -> PolicySpec:
    name, _, opts = text.partition(":")
    cls = host.registry.get("policy", name)
    known: dict[str, Any] = dict(cls.options)
    options = []
    for item in filter(None, opts.split(",")):
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"--policy {name}", f"option {item!r} must be key=value")
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"--policy {name}", f"unknown option {key!r} (options: {allowed})")
        options.append((key, _convert_option(name, key, raw, known[key])))
    return PolicySpec(name, tuple(options))
