"""What a workload declares: its parameters (validated, CLI-ready) and its metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmbench.errors import ConfigError


@dataclass(frozen=True)
class Param:
    """One workload parameter; ``flags`` are its CLI spellings (first is the canonical)."""

    name: str
    type: type
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    min: float | None = None  # inclusive lower bound
    above: float | None = None  # exclusive lower bound
    max: float | None = None
    parse: Callable[[str], Any] | None = None

    @property
    def cli(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.name.replace("_", "-"),)

    @property
    def field(self) -> str:
        return "/".join(self.cli)

    def convert(self, raw: Any) -> Any:
        """Check and convert a value from the CLI (str) or a config file (typed)."""
        try:
            if isinstance(raw, str):
                value = self.parse(raw) if self.parse else self.type(raw)
            elif self.type is float and isinstance(raw, int) and not isinstance(raw, bool):
                value = float(raw)
            elif isinstance(raw, self.type) and not (
                isinstance(raw, bool) and self.type is not bool
            ):
                value = raw
            else:
                raise TypeError
        except (TypeError, ValueError):
            raise ConfigError(self.field, f"expected {self.type.__name__}, got {raw!r}") from None
        if self.min is not None and value < self.min:
            raise ConfigError(self.field, f"must be >= {self.min:g} (got {value})")
        if self.above is not None and value <= self.above:
            raise ConfigError(self.field, f"must be > {self.above:g} (got {value})")
        if self.max is not None and value > self.max:
            raise ConfigError(self.field, f"must be <= {self.max:g} (got {value})")
        return value


@dataclass(frozen=True)
class Metric:
    unit: str
    doc: str
    lower_is_better: bool = True
    kind: str = "time"  # time -> arithmetic mean; rate -> harmonic mean; count


@dataclass
class WorkloadSpec:
    """Resolved parameter values for a run."""

    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["values"][key]
        except KeyError:
            raise AttributeError(key) from None


def resolve_params(params: tuple[Param, ...], given: dict[str, Any]) -> WorkloadSpec:
    """Defaults overlaid with ``given`` (by param name), each checked."""
    known = {p.name: p for p in params}
    for key in given:
        if key not in known:
            raise ConfigError(key, f"unknown parameter (known: {', '.join(sorted(known))})")
    values = {}
    for p in params:
        values[p.name] = p.convert(given[p.name]) if key_in(given, p.name) else p.default
    return WorkloadSpec(values)


def key_in(d: dict[str, Any], key: str) -> bool:
    return key in d and d[key] is not None


def parse_int_auto(text: str) -> int:
    """Integers in decimal or 0x-hex, as a KVM developer writes gpas."""
    return int(text, 0)


def choice(field: str, allowed: tuple[str, ...]) -> Callable[[str], str]:
    """A parser for a parameter with a fixed set of values."""

    def parse(text: str) -> str:
        if text not in allowed:
            raise ConfigError(field, f"expected one of {', '.join(allowed)} (got {text!r})")
        return text

    return parse


def parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)
