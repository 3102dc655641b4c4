"""Bad input, table-driven, as a user types it: every case exits 2 with one line naming the
field and what is allowed, prints no traceback, and writes nothing."""

from __future__ import annotations

import pytest
from conftest import mmbench

# (arguments after `mmbench run`, text the one line must contain)
FLAGS = [
    (["rom-access", "--rom-interval-ms", "nan"], "--rom-interval-ms: must be a finite number"),
    (["rom-access", "--rom-interval-ms", "inf"], "--rom-interval-ms: must be a finite number"),
    (["rom-access", "--rom-interval-ms", "0"], "--rom-interval-ms: must be > 0"),
    (["rom-access", "--rom-jitter", "nan"], "--rom-jitter: must be a finite number"),
    (["rom-access", "--rom-jitter", "1"], "--rom-jitter: must be <= 0.99"),
    (["rom-access", "--passes", "1"], "--passes: must be >= 2 (got 1)"),
    (["rom-access", "--passes", "2.5"], "--passes: expected int, got '2.5'"),
    (["rom-access", "-c", "0"], "-c/--threads: must be >= 1"),
    (["rom-access", "-m", "lots"], "-m/--mb: expected int"),
    (["rom-access", "--rom-kib", "6"], "--rom-kib: must be a multiple of 4"),
    (["rom-access", "--rom-read-kib", "6"], "--rom-read-kib: must be a multiple of 4"),
    (["rom-access", "--rom-gpa", "0x1001"], "--rom-gpa: must be 4 KiB aligned"),
    (["rom-access", "--rom-gpa", "0x100000000000000"], "guest-physical space arch x86-shadow"),
    (["rom-access", "--rom-gpa", "zz"], "--rom-gpa: expected int"),
    (["rom-access", "--mmu-pages", "10"], "--mmu-pages: must be 0 (KVM's default) or >= 64"),
    (
        ["rom-access", "--passes", "4", "--delete-ram-after-pass", "4"],
        "--delete-ram-after-pass: must be 0 (never) or below --passes (4), got 4",
    ),
    (["dirty-log", "--delete-slot-after-s", "-1"], "--delete-slot-after-s: must be >= 0"),
    (["dirty-log", "-b", "infG"], "-b/--size: expected a size like 4T, 64G, 512M"),
    (["dirty-log", "-b", "1e400G"], "-b/--size: expected a size like 4T"),
    (["dirty-log", "-b", "5X"], "units K, M, G, T, P"),
    (["dirty-log", "-b", "1.0000001G"], "-b/--size: expected a size"),
    (["dirty-log", "-b", "5P"], "--size: 5P exceeds what arch x86-tdp models (16T)"),
    (["dirty-log", "-b", "1000000"], "-b/--size: must be >= 2M (got 1000000)"),
    (["dirty-log", "--enable", "sometimes"], "--enable: expected one of wrprot, eager-split"),
    (["dirty-log", "--backing", "3m"], "--backing: expected one of 2m, 1g, 4k"),
    (["dirty-log", "--manual-protect", "maybe"], "--manual-protect: expected true or false"),
    (["dirty-log", "--run-on-s", "0"], "--run-on-s: must be > 0"),
    (["dirty-log", "--dirty-percent", "nan"], "--dirty-percent: must be a finite number"),
    (["dirty-log", "-v", "0"], "-v/--vcpus: must be >= 1"),
    (["teardown", "-b", "20T"], "--size: 20T exceeds what arch arm64 models (16T)"),
    (["teardown", "-b", "3M"], "--size: must be a multiple of 2 MiB"),
    (["mmu-pressure", "--hot", "100"], "--hot: must be <= --processes"),
    # values that start with '-' are values, refused with a reason
    (["dirty-log", "-b", "-64G"], "-b/--size: expected a size"),
    (["rom-access", "--rom-gpa", "-0x1000"], "--rom-gpa: must be >= 0x0 (got -0x1000)"),
    (["rom-access", "--rom-interval-ms", "-5"], "--rom-interval-ms: must be > 0 (got -5)"),
    # common run options
    (["rom-access", "--jobs", "0"], "--jobs: must be >= 1 (got 0)"),
    (["rom-access", "--jobs", "-1"], "--jobs: must be >= 1 (got -1)"),
    (["rom-access", "--reps", "0"], "--reps: must be >= 1 (got 0)"),
    (["rom-access", "--reps", "5000"], "--reps: must be 1..1000"),
    (["rom-access", "--name", ""], "--name: must not be empty"),
    (["rom-access", "--name", "../x"], "--name: '../x': use letters, digits"),
    (["rom-access", "--arch", ""], "--arch: must not be empty"),
    (["rom-access", "--arch", "sparc"], "--arch: unknown arch 'sparc' (available:"),
    (["rom-access", "--backend", ""], "--backend: must not be empty"),
    (["rom-access", "--costs", ""], "--costs: must not be empty"),
    (["rom-access", "--plot", ""], "--plot: must not be empty"),
    (["rom-access", "--runs-dir", ""], "--runs-dir: must not be empty"),
    (["rom-access", "--policy", ""], "--policy: must not be empty"),
    (["rom-access", "--policy", "nope"], "--policy: unknown policy 'nope' (available:"),
    (["rom-access", "--bogus"], "unrecognized arguments: --bogus"),
    # the host kernel
    (["rom-access", "--preempt", "rt"], "--preempt: invalid choice: 'rt' (choose from"),
    (["rom-access", "--hz", "123"], "--hz: must be one of 100, 250, 300, 1000 (got 123)"),
    (["rom-access", "--hz", "fast"], "--hz: expected one of 100, 250, 300, 1000"),
    (["rom-access", "--host-cpus", "0"], "--host-cpus: must be >= 1 (got 0)"),
    (["dirty-log", "-b"], "-b/--size: expected one argument"),
    (["nope"], "WORKLOAD: invalid choice: 'nope'"),
    # policy options: declared types and ranges, each given once; each policy once
    (["rom-access", "--policy", "fast-invalidate:batch=-5"], "batch: must be >= 1 (got -5)"),
    (["rom-access", "--policy", "fast-invalidate:batch=0"], "batch: must be >= 1 (got 0)"),
    (["rom-access", "--policy", "fast-invalidate:batch=2.5"], "batch: expected int"),
    (["rom-access", "--policy", "zap-all:lock_break=maybe"], "lock_break: expected true or false"),
    (["rom-access", "--policy", "zap-all:lock_break=1,lock_break=0"], "lock_break: given twice"),
    (["rom-access", "--policy", "zap-all:lock_break"], "option 'lock_break' must be key=value"),
    (["rom-access", "--policy", "zap-slot:x=1"], "unknown option 'x' (options: none)"),
    (["rom-access", "--policy", "zap-all", "--policy", "zap-all"], "'zap-all' given twice"),
    (["rom-access", "--policy", "zap-slot+zap-all"], "both answer mmbench_flush_shadow_memslot"),
    (["dirty-log", "--policy", "lazy-collapse:delay_s=-1"], "delay_s: must be >= 0 (got -1)"),
    (["dirty-log", "--policy", "lazy-collapse:delay_s=nan"], "delay_s: must be a finite number"),
    (["mmu-pressure", "--policy", "lru-scan:overscan=-3"], "overscan: must be >= 1 (got -3)"),
]

# (arguments after `mmbench`, text the one line must contain)
COMMANDS = [
    (["compare", "a", "--format", "x"], "--format: invalid choice: 'x'"),
    (["show"], "the following arguments are required: run"),
    (["show", "../elsewhere"], "RUN: '../elsewhere': use letters"),
    (["frob"], "COMMAND: invalid choice: 'frob'"),
    (["plot", "x"], "the following arguments are required: --out"),
]

# (config file text, text the one line must contain)
CONFIGS = [
    ("workload: rom-access\nparams: {mb: 64}\nparams: {mb: 2000}\n", "key 'params' given twice"),
    ("workload: rom-access\nparams: {mb: 64, mb: 65}\n", "key 'mb' given twice"),
    ("workload: rom-access\nparams: {rom_interval_ms: .nan}\n", "must be a finite number"),
    ("workload: rom-access\nparams: {rom_interval_ms: .inf}\n", "must be a finite number"),
    ("workload: rom-access\nparams: {passes: true}\n", "params.passes: expected int"),
    ("workload: dirty-log\nparams: {size: 5P}\n", "5P exceeds what arch x86-tdp models"),
    ("workload: dirty-log\nparams: {size: '-64G'}\n", "params.size: expected a size"),
    ("workload: rom-access\nkernel: {preempt: rt}\n", "kernel.preempt: must be one of none,"),
    ("workload: rom-access\nkernel: {hz: 99}\n", "kernel.hz: must be one of 100, 250"),
    ("workload: rom-access\nkernel: {host_cpus: 0}\n", "kernel.host_cpus: must be an integer"),
    ("workload: rom-access\nkernel: {host_cpus: true}\n", "kernel.host_cpus: must be an"),
    ("workload: rom-access\nkernel: {tick: 1}\n", "kernel.tick: unknown key (allowed:"),
    ("workload: rom-access\nkernel: none\n", "kernel: expected a mapping"),
]

# (cost file text, text the one line must contain)
COSTS = [
    ("costs:\n  zap_sp: .nan\n", "costs.zap_sp: must be a finite number >= 0 (ns), got nan"),
    ("costs:\n  zap_sp: .inf\n", "costs.zap_sp: must be a finite number >= 0"),
    ("costs:\n  zap_sp: -1\n", "costs.zap_sp: must be a finite number >= 0"),
    ("costs:\n  zap_sp: fast\n", "costs.zap_sp: must be a finite number >= 0"),
    ("costs:\n  zap_sp: 5\n  zap_sp: 6\n", "key 'zap_sp' given twice"),
    ("costs:\n  zap_spp: 5\n", "costs.zap_spp: unknown cost (known:"),
    ("costs: [1, 2]\n", "expected a mapping 'costs: {name: ...}'"),
    ("costs: {zap_sp: {ns: .nan}}\n", "costs.zap_sp: must be a finite number"),
]


def _refused(proc, message: str, runs_dir) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert message in err, err
    assert not runs_dir.exists() or not [p for p in runs_dir.iterdir()], list(runs_dir.iterdir())


@pytest.mark.parametrize(("args", "message"), FLAGS, ids=[" ".join(a) for a, _ in FLAGS])
def test_bad_flag(args, message, runs_dir):
    _refused(mmbench("run", *args), message, runs_dir)


@pytest.mark.parametrize(("args", "message"), COMMANDS, ids=[" ".join(a) for a, _ in COMMANDS])
def test_bad_command(args, message, runs_dir):
    _refused(mmbench(*args), message, runs_dir)


@pytest.mark.parametrize(("text", "message"), CONFIGS)
def test_bad_config(text, message, tmp_path, runs_dir):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    proc = mmbench("run", "--config", str(cfg))
    _refused(proc, message, runs_dir)
    assert str(cfg) in proc.stderr


def test_config_not_utf8(tmp_path, runs_dir):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("workload: rom-access\ndescription: caf\u00e9\n".encode("latin-1"))
    _refused(mmbench("run", "--config", str(cfg)), "not UTF-8", runs_dir)


@pytest.mark.parametrize(("text", "message"), COSTS)
def test_bad_cost_file(text, message, tmp_path, runs_dir):
    costs = tmp_path / "costs.yaml"
    costs.write_text(text)
    _refused(mmbench("run", "rom-access", "--costs", str(costs)), message, runs_dir)


def test_cost_file_not_utf8(tmp_path, runs_dir):
    costs = tmp_path / "costs.yaml"
    costs.write_bytes(b"costs:\n  zap_sp: 5 # \xff\n")
    _refused(mmbench("run", "rom-access", "--costs", str(costs)), "not UTF-8", runs_dir)
