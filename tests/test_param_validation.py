"""Parameter checks through ``pydantic_core`` answer exactly as pydantic's ``TypeAdapter``.

``Param`` builds its validator from the strict core schema directly (start-up: pydantic's
model machinery is not imported). Every parameter a workload or a policy declares is
checked against the ``TypeAdapter`` it used to build, over a table of values from the CLI
(strings) and from config files (typed): accepted values are equal and of the same type,
rejected ones give the same one-line error naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from functools import cached_property
from typing import Annotated, Any

import pytest

from mmbench.errors import ConfigError
from mmbench.host.manager import get_host
from mmbench.run.policy_spec import option_params
from mmbench.workloads.base import Param


class AdapterParam(Param):
    """The same declaration, checked by pydantic's ``TypeAdapter`` (the previous route)."""

    @cached_property
    def _validator(self) -> Any:
        from pydantic import Field, TypeAdapter

        # the same constraints; what differs is the route from them to a validator
        return TypeAdapter(Annotated[self.type, Field(strict=True, **self.rules())])


def declared() -> list[tuple[str, Param]]:
    """Every parameter of every registered workload and policy option."""
    reg = get_host().registry
    out = []
    for name in reg.names("workload"):
        out += [(f"{name}.{p.name}", p) for p in reg.get("workload", name).params]
    for name in reg.names("policy"):
        out += [(f"{name}:{k}", p) for k, p in option_params(reg.get("policy", name)).items()]
    return out


def values_for(p: Param) -> list[Any]:
    """Typed and CLI values around the declaration's bounds, and values of other types."""
    edges = [b for b in (p.min, p.above, p.max) if b is not None]
    near = [x for b in edges for x in (b, b - 1, b + 1, b - 0.5, b + 0.5, b * 2)]
    near += [int(x) for x in near if math.isfinite(x)]
    typed = [0, 1, -1, 2, 7, 64, 2**40, 2**70, 0.0, 1.0, 1.5, -2.5, 1e300]
    typed += [math.inf, -math.inf, math.nan, True, False, None, "", "x", "4G", [], {}]
    typed += [p.default, *near, *(getattr(p.parse, "allowed", ()) or ())]
    cli = ["0", "1", "-1", "3", "0x10", "1.5", "inf", "nan", "", "x", "true", "no", "4G", "2M"]
    cli += [p.show(v) for v in [p.default, *near] if isinstance(v, int | float)]
    return typed + cli


def outcome(p: Param, raw: Any) -> tuple[str, Any]:
    try:
        value = p.convert(raw)
    except ConfigError as exc:
        return ("error", str(exc))
    return ("ok", (type(value).__name__, repr(value)))


PARAMS = declared()


def test_every_declared_param_is_covered() -> None:
    types = {p.type for _, p in PARAMS}
    assert {int, float, str, bool} <= types, types
    assert len(PARAMS) > 40


@pytest.mark.parametrize(("where", "param"), PARAMS, ids=[w for w, _ in PARAMS])
def test_core_validator_answers_as_type_adapter(where: str, param: Param) -> None:
    fields = {f.name: getattr(param, f.name) for f in dataclasses.fields(param)}
    reference = AdapterParam(**fields)
    rows = [(raw, outcome(param, raw), outcome(reference, raw)) for raw in values_for(param)]
    differ = [(raw, new, old) for raw, new, old in rows if new != old]
    assert not differ, f"{where}: {differ[:3]}"
    accepted = [raw for raw, new, _ in rows if new[0] == "ok"]
    rejected = [new[1] for _, new, _ in rows if new[0] == "error"]
    assert accepted and rejected  # the table reaches both sides of every declaration
    assert all(msg.startswith(param.field + ": ") and "\n" not in msg for msg in rejected)
