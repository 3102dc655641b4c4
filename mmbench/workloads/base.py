"""What a workload declares: its parameters (validated, CLI-ready) and its metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any

from mmbench.errors import ConfigError
from mmbench.workloads.sizes import UNITS_HELP, size_text


@dataclass(frozen=True)
class Param:
    """One workload parameter; ``flags`` are its CLI spellings (first is the canonical).

    Values are checked by a pydantic validator built from the declaration (type, bounds,
    finite floats, non-empty strings), the same for CLI flags and config files; ``unit``
    ``"size"`` reads and shows bytes as ``4T``/``64G``, ``"gpa"`` shows addresses in hex.
    """

    name: str
    type: type
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    min: float | None = None  # inclusive lower bound
    above: float | None = None  # exclusive lower bound
    max: float | None = None
    parse: Callable[[str], Any] | None = None
    unit: str = ""  # "size" (bytes, shown as 4T) or "gpa" (shown in hex)
    switch: bool = False  # a bool the CLI sets by its flag alone (the selftest's ``-q``)

    @property
    def cli(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.name.replace("_", "-"),)

    @property
    def field(self) -> str:
        return "/".join(self.cli)

    def rules(self) -> dict[str, Any]:
        """The declaration as pydantic constraints: bounds, finite floats, non-empty strings."""
        bounds = {"ge": self.min, "gt": self.above, "le": self.max}
        rules: dict[str, Any] = {k: v for k, v in bounds.items() if v is not None}
        if self.type is float:
            rules["allow_inf_nan"] = False
        if self.type is str:
            rules["min_length"] = 1
        return rules

    @cached_property
    def _validator(self) -> Any:
        """A ``pydantic_core.SchemaValidator`` of the strict core schema that pydantic's
        ``TypeAdapter(Annotated[type, Field(strict=True, **rules)])`` builds for int,
        float, str and bool (``tests/test_param_validation.py`` checks they are equal and
        answer alike), without importing pydantic's model machinery: 0.06 s against
        0.19 s at start-up here. Other types go through the ``TypeAdapter`` itself."""
        rules = self.rules()
        bounded = bool(rules.keys() & {"ge", "gt", "le"})
        kinds = {int: "int", float: "float", str: "str", bool: "bool"}
        kind = kinds.get(self.type)
        if kind is None or (bounded and kind in ("str", "bool")):
            from pydantic import Field, TypeAdapter

            return TypeAdapter(Annotated[self.type, Field(strict=True, **rules)]).validator
        from pydantic_core import SchemaValidator

        return SchemaValidator({"type": kind, "strict": True, **rules})  # type: ignore[misc]

    def show(self, value: Any) -> str:
        """A value as the user would type it: sizes with units, addresses in hex."""
        if isinstance(value, bool):
            return str(value).lower()  # as typed: true / false
        if not isinstance(value, int | float):
            return str(value)
        if self.unit == "size" and float(value).is_integer():
            return size_text(int(value))
        if self.unit == "gpa" and float(value).is_integer():
            return f"{int(value):#x}"
        return f"{value:g}"

    @property
    def choices(self) -> tuple[str, ...]:
        """The values allowed, where they are a fixed set (``--enable``, booleans)."""
        if self.type is bool:
            return ("true", "false")
        return tuple(getattr(self.parse, "allowed", ()))

    @property
    def metavar(self) -> str:
        """How ``--help`` names the value: ``SIZE``, ``GPA``, ``{a,b}``, ``INT``."""
        if self.choices:
            return "{" + ",".join(self.choices) + "}"
        return {"size": "SIZE", "gpa": "GPA"}.get(self.unit) or self.type.__name__.upper()

    def rule(self) -> str:
        """The bounds as a user reads them: ``>= 2M``, ``1..512``, ``> 0``."""
        lo = self.min if self.min is not None else None
        if lo is not None and self.max is not None:
            return f"{self.show(lo)}..{self.show(self.max)}"
        parts = [
            f"{op} {self.show(v)}"
            for op, v in ((">=", self.min), (">", self.above), ("<=", self.max))
            if v is not None
        ]
        return ", ".join(parts)

    def help_text(self) -> str:
        """``--help``'s line: what it is, then the default as typed and the bounds."""
        extra = [f"default: {self.show(self.default)}"]
        if self.rule() and not self.choices:
            extra.append(self.rule())
        return f"{self.help} ({'; '.join(extra)})"

    def convert(self, raw: Any) -> Any:
        """Check and convert a value from the CLI (str) or a config file (typed)."""
        expects = {"size": UNITS_HELP}.get(self.unit) or (
            "true or false" if self.type is bool else self.type.__name__
        )
        value = raw
        if isinstance(raw, str) and (self.parse or self.type is not str):
            parse = self.parse or (parse_bool if self.type is bool else self.type)
            try:
                value = parse(raw)
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(self.field, f"expected {expects}, got {raw!r}") from None
        from pydantic_core import ValidationError

        try:
            return self._validator.validate_python(value)
        except ValidationError as exc:
            raise ConfigError(self.field, self._reason(exc.errors()[0], value, expects)) from None

    def _reason(self, err: Any, value: Any, expects: str) -> str:
        ctx = err.get("ctx") or {}
        for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if key in ctx:
                return f"must be {op} {self.show(ctx[key])} (got {self.show(value)})"
        if err["type"] == "finite_number":
            return f"must be a finite number (got {value})"
        if err["type"] == "string_too_short":
            return "must not be empty"
        return f"expected {expects}, got {value!r}"


@dataclass(frozen=True)
class Samples:
    """Where a metric's per-event samples are stored: field ``field`` of the events of
    series ``series`` (times ``scale``), only those whose field ``where[0]`` lies in
    ``[where[1], where[2]]``. ``compare`` reads its tail percentiles from them."""

    series: str
    field: str
    scale: float = 1.0
    where: tuple[str, float, float] | None = None

    def of(self, series: dict[str, list]) -> list[float]:
        """The samples in one repetition's ``series`` (``[t_ns, {fields}]`` events)."""
        out = []
        for item in series.get(self.series, ()):
            ev = item[1]
            if not isinstance(ev, dict) or not isinstance(ev.get(self.field), int | float):
                continue
            if self.where and not self.where[1] <= ev.get(self.where[0], -1) <= self.where[2]:
                continue
            out.append(float(ev[self.field]) * self.scale)
        return out


@dataclass(frozen=True)
class Metric:
    """A workload's figure: its unit, what it means, its direction and how to average it.

    ``stat`` names the kernel statistic it is (KVM's binary stats / debugfs name, e.g.
    ``mmu_shadow_zapped``) where there is one; ``samples`` says where its per-event
    samples are, for percentiles."""

    unit: str
    doc: str
    lower_is_better: bool = True
    kind: str = "time"  # time -> arithmetic mean; rate -> harmonic mean; count
    stat: str = ""
    samples: Samples | None = None


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


@dataclass(frozen=True)
class Choice:
    """A parser for a parameter with a fixed set of values (``allowed``: what help lists)."""

    field: str
    allowed: tuple[str, ...]

    def __call__(self, text: str) -> str:
        if text not in self.allowed:
            raise ConfigError(
                self.field, f"expected one of {', '.join(self.allowed)} (got {text!r})"
            )
        return text


def choice(field: str, allowed: tuple[str, ...]) -> Callable[[str], str]:
    """A parser for a parameter with a fixed set of values."""
    return Choice(field, allowed)


def parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)
