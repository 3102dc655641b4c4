"""The plugin host: documented hookspecs, the typed facade, contracts checked at registration,
arch defaults that do not depend on registration order, tracing."""

from __future__ import annotations

import inspect
import types

import pytest
from conftest import SMALL, mmbench

from mmbench import hookimpl
from mmbench.errors import ConfigError
from mmbench.host import contracts, hookspecs
from mmbench.host.hooks import RunHooks, declared
from mmbench.host.hookspecs import TRACE_ENV
from mmbench.host.manager import Host, get_host, run_manager
from mmbench.run import assemble, run_once
from mmbench.run.paths import policy_paths

SMALL_DL = ["--size", "2G", "--vcpus", "2", "--run-on-s", "62", "--policy", "collapse-sync"]
ROM = {"threads": 2, "mb": 64, "passes": 6, "rom_interval_ms": 5}


def specs() -> dict[str, object]:
    return {n: f for n, f in vars(hookspecs).items() if hasattr(f, hookspecs.SPEC_MARK)}


# -- hookspecs and the facade ------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(specs()))
def test_every_hookspec_is_documented(name):
    doc = inspect.getdoc(specs()[name]) or ""
    assert len(doc.split()) >= 5, f"{name} needs a docstring saying when it runs"


def test_hookspecs_document_tracing():
    assert hookspecs.TRACE_ENV in (hookspecs.__doc__ or "")


def test_facade_declares_every_event_hook_with_pluggy_semantics():
    events = {
        n: bool(getattr(f, hookspecs.SPEC_MARK).get("firstresult"))
        for n, f in specs().items()
        if not n.startswith("mmbench_register_")
    }
    assert declared() == events
    pm = run_manager()
    hooks = RunHooks(pm)
    for name, first in events.items():
        if first:  # selection hooks (once per invalidation) are counted, for the warning
            getattr(hooks, name)(**dict.fromkeys(pm.hook.__dict__[name].spec.argnames))
            assert hooks.calls[name] == 1
        else:  # pluggy's own callers, not wrappers: no cost on the fault path
            assert getattr(hooks, name) is getattr(pm.hook, name)


# -- arch defaults are trylast ---------------------------------------------------------------
class TeardownRecorder:
    name = "recorder"
    archs = ("x86-shadow",)

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm):
        self.calls += 1
        return True


@pytest.mark.parametrize("policy_first", [False, True])
def test_the_policy_answers_before_the_arch_default_in_any_order(policy_first):
    arch = get_host().registry.get("arch", "x86-shadow")()
    policy = TeardownRecorder()
    plugins = (policy, arch) if policy_first else (arch, policy)
    # the arch's default would need a real kvm; it must not be reached
    assert RunHooks(run_manager(*plugins)).mmbench_flush_shadow_all(kvm=None) is True
    assert policy.calls == 1


def test_registration_order_does_not_change_a_run():
    host = get_host()
    wl = host.registry.get("workload", "rom-access")()
    arch = host.registry.get("arch", "x86-shadow")()
    policy = host.registry.get("policy", "zap-slot")()
    vm = host.registry.get("backend", "sim")().create_vm(
        RunHooks(run_manager(policy, arch)), arch, arch.costs
    )
    from mmbench.workloads.base import resolve_params

    reversed_order = wl.run(vm, resolve_params(wl.params, ROM))
    assert reversed_order == run_once("rom-access", ROM, "zap-slot")["metrics"]


# -- contracts ---------------------------------------------------------------------------
def plugin_registering(*classes, kind="policies"):
    module = types.ModuleType("mmbench_test_plugin")

    @hookimpl(specname=f"mmbench_register_{kind}")
    def register_them(register):
        for cls in classes:
            register(cls)

    module.register_them = register_them
    return module


class Unmarked:
    name = "unmarked"
    archs = ("x86-shadow",)

    def mmbench_flush_shadow_memslot(self, kvm, slot):
        return True


class Misspelled:
    name = "misspelled"
    archs = ("x86-shadow",)

    @hookimpl
    def mmbench_flush_shadow_memslots(self, kvm, slot):
        return True


class NoArchs:
    name = "no-archs"


class ArchsAString:
    name = "archs-a-string"
    archs = "x86-shadow"


class WrongArgs:
    name = "wrong-args"
    archs = ("x86-shadow",)

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm, slot):
        return True


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (Unmarked, "mmbench_flush_shadow_memslot lacks @hookimpl"),
        (Misspelled, "mmbench_flush_shadow_memslots is no mmbench hook"),
        (NoArchs, "has no 'archs'"),
        (ArchsAString, "'archs' is 'x86-shadow', not tuple"),
        (WrongArgs, "takes slot, which the hook does not pass"),
    ],
)
def test_a_policy_that_breaks_its_contract_is_refused(cls, message):
    with pytest.raises(ConfigError, match=message) as exc:
        Host([plugin_registering(cls)])
    assert "mmbench_test_plugin" in str(exc.value) and "\n" not in str(exc.value)


def test_an_arch_default_must_be_trylast():
    base = get_host().registry.get("arch", "x86-tdp")

    class EagerArch(base):
        name = "eager-arch"

        @hookimpl
        def mmbench_flush_shadow_all(self, kvm):
            return True

    with pytest.raises(ConfigError, match="mark it @hookimpl\\(trylast=True\\)"):
        Host([plugin_registering(EagerArch, kind="archs")])


def test_a_registration_hook_that_raises_is_skipped_and_named(capsys):
    module = types.ModuleType("mmbench_broken_plugin")

    @hookimpl
    def mmbench_register_policies(register):
        register(Bare)
        raise RuntimeError("no luck")

    class Bare:
        """Registered, then its plugin's registration crashed."""

        name = "half-registered"
        archs = ("x86-shadow",)

    module.mmbench_register_policies = mmbench_register_policies
    host = Host([module])
    err = capsys.readouterr().err
    assert "mmbench_broken_plugin skipped: mmbench_register_policies raised: RuntimeError" in err
    assert "half-registered" not in host.registry.names("policy")
    assert "zap-slot" in host.registry.names("policy")


def test_optional_attributes_get_their_documented_defaults():
    class Bare:
        """A policy that states only what it must."""

        name = "bare"
        archs = ("x86-shadow",)

        def helper(self):  # no hook: serves no path
            return None

        @hookimpl
        def mmbench_reclaim(self, kvm, nr_to_zap):
            return None

    host = Host([plugin_registering(Bare)])
    cls = host.registry.get("policy", "bare")
    assert (cls.options, cls.year, cls.paths) == ({}, 9999, None)
    assert cls.description == "A policy that states only what it must."
    assert policy_paths(cls) == ("reclaim",)
    backend = host.registry.get("backend", "sim")()
    assert backend.default_arch() is None and backend.supported_policies(["a"]) == ["a"]
    assert not contracts.problems(host.registry.get("arch", "arm64")(), contracts.Arch)


def test_assemble_with_extra_plugins_and_monitors():
    with assemble("zap-slot", arch="x86-shadow", check=True) as run:
        assert [m.name for m in run.monitors] == ["invariants"]
        assert [p.name for p in run.policies] == ["zap-slot"]
        assert run.vm.hook is run.hooks and run.label == "zap-slot"
        assert {type(p).__name__ for p in run.hooks.plugins()} == {
            "X86Shadow",
            "ZapSlot",
            "Invariants",
        }


# -- tracing -------------------------------------------------------------------------------
def trace_lines(*args: str) -> list[str]:
    err = mmbench(*args, "--jobs", "1", "--check", env={TRACE_ENV: "1"}, check=True).stderr
    return [ln for ln in err.splitlines() if ln.startswith("mmbench: trace: ")]


def test_trace_hooks_names_who_answered(runs_dir):
    lines = trace_lines("run", "rom-access", *SMALL, "--policy", "zap-slot")
    assert any("registered policy 'zap-slot'" in ln and "entry point" in ln for ln in lines)
    delete = [ln for ln in lines if "mmbench_flush_shadow_memslot(" in ln]
    assert delete and all("-> True [answered by zap-slot (ZapSlot)]" in ln for ln in delete)
    assert any("mmbench_memslot_deleted(" in ln and "invariants" in ln for ln in lines)
    assert "trace" not in mmbench("run", "rom-access", *SMALL, "--policy", "zap-slot").stderr


def test_trace_hooks_shows_the_arch_default_answering(runs_dir):
    lines = trace_lines("run", "dirty-log", "--arch", "x86-tdp", *SMALL_DL)
    enable = [ln for ln in lines if "mmbench_dirty_log_enable(" in ln]
    assert enable and all("answered by x86-tdp (X86Tdp)" in ln for ln in enable)
    disable = [ln for ln in lines if "mmbench_dirty_log_disable(" in ln]
    assert disable and all("answered by collapse-sync (CollapseSync)" in ln for ln in disable)


def test_the_kvm_backend_finds_the_runs_policy_through_the_facade():
    from mmbench_kvm.kvm_vm import run_monitors, run_policy_name

    run = assemble("zap-slot", check=True)  # the sim VM; only the run's hooks matter here
    assert run_policy_name(run.hooks) == "zap-slot"
    assert run_monitors(run.hooks) == ["invariants"]


def test_list_shows_each_plugins_distribution_or_built_in():
    out = mmbench("list", check=True).stdout
    plugins = out.split("Plugins loaded:")[1].splitlines()
    assert "  mmbench.backends.sim (built-in): mmbench_register_backends" in plugins
    x86 = [ln for ln in plugins if ln.startswith("  x86 (")]
    assert x86 and "entry point x86 = mmbench_x86" in x86[0]
    dist = x86[0].split("(")[1].split(",")[0].split()
    assert len(dist) == 2 and dist[0].startswith("mmbench")  # name and version
