"""The host kernel the model runs on: preemption model, HZ, CPUs, and a scheduler tick.

Whether a zap loop gives mmu_lock away depends on the host kernel, not on the policy.
``cond_resched_lock()`` (kernel/sched/core.c ``__cond_resched_lock``) drops the lock when
``spin_needbreak(lock) || need_resched()``:

- ``spin_needbreak()`` / ``rwlock_needbreak()`` (include/linux/spinlock.h) report
  contention only on a preemptible kernel: under ``#ifdef CONFIG_PREEMPTION`` until
  "sched/core: Drop spinlocks on contention iff kernel is preemptible" (Sean
  Christopherson, 2024, upstream in v6.13) made them ``if (!preempt_model_preemptible())
  return 0;``, so that a PREEMPT_DYNAMIC kernel booted ``preempt=none`` or ``voluntary``
  behaves like a static one. Only ``full`` breaks on contention.
- ``need_resched()`` is set on the holder's CPU by the scheduler tick under every model:
  CFS's ``check_preempt_tick()`` (kernel/sched/fair.c, v2.6.23 .. 6.5) calls
  ``resched_curr()`` at the first tick after the running task used up its
  ``sched_slice()``, which only happens when its CPU has more than one runnable task.

The tick model here: runnable threads are every actor that is not idle (vCPUs running
guest code or spinning on mmu_lock, the VMM inside an ioctl, a kernel worker at work);
they spread evenly over ``host_cpus``, so the holder's CPU runs ``ceil(nr_running /
host_cpus)`` of them. Its slice is CFS's for that many equal-weight (nice 0) tasks:
``__sched_period(nr) / nr`` with ``sysctl_sched_latency`` = 6 ms and
``sysctl_sched_min_granularity`` = 0.75 ms, both scaled by ``1 + ilog2(min(cpus, 8))``
(``SCHED_TUNABLESCALING_LOG``, ``get_update_sysctl_factor``), and ``sched_nr_latency`` = 8.
need_resched is set at the first tick (every ``1/HZ`` s) at or after the slice's end.
When the holder then schedules, the other tasks of its CPU run their slices before it
runs again.

A thread that wakes while every host CPU is busy (the VMM after rom.sh's ``sleep``)
preempts a running vCPU at once, under both schedulers:

- ``cfs`` (v2.6.23 .. 6.5): ``check_preempt_wakeup()`` preempts the running task when
  the woken one's vruntime is a wakeup granularity behind, which a thread that slept
  (placed at ``min_vruntime - sched_latency / 2``, ``place_entity``) always is; the
  resched IPI makes a vCPU in guest mode exit.
- ``eevdf`` (6.6+, "sched/fair: Implement an EEVDF-like scheduling policy", Peter
  Zijlstra, 2023): ``check_preempt_wakeup_fair()`` preempts when ``pick_eevdf()`` picks
  the woken thread. ``RUN_TO_PARITY`` protects the running task only until the deadline
  it had when it was last picked (``set_protect_slice()``: ``vprot``); a vCPU thread that
  has had its CPU to itself for longer than that is unprotected, and the woken thread,
  which kept its lag across the sleep (``PLACE_LAG``) and so is eligible, wins. Traced on
  this development host (6.18, 2 CPUs, two vCPU threads running guest code, rom.sh's
  1 ms pause; ``sched_wakeup``/``sched_switch`` in a private tracefs instance, 2026-12-02):
  233 of 239 wake-ups from the sleep's hrtimer set need_resched and the VMM was on a CPU
  8 us later (p50; 15 us max); 6 waited 3.2-3.8 ms, for a tick (a vCPU picked again
  within its protected slice: not modelled). An earlier model made every such wake-up
  wait for the tick; its evidence was a harness artefact (the kvm backend started a
  watchdog thread per guest access, and a new thread does wait).

A thread that wakes onto a CPU its waker leaves (the SRCU kworker a memslot update
waits for, and the caller it wakes back) takes that CPU without waiting, with one
exception that a trace of this host shows, under ``eevdf``
(``grace_period_wake_wait_ns``): the VMM woken from the first grace period of a ROM
delete, which follows the cat's read, often finds the CPU given to a vCPU instead.
``synchronize_srcu_expedited`` queues ``process_srcu`` on the caller's CPU; the kworker
ends the grace period and, through ``srcu_invoke_callbacks``, ``complete()``s the caller
(kernel/rcu/srcutree.c); when the kworker leaves the CPU, ``pick_eevdf()`` chooses between
the VMM and the vCPU that rom.sh's wake-up had displaced, which has waited since with its
deadline unspent. When the vCPU wins, ``RUN_TO_PARITY`` protects it until that deadline,
and the VMM gets the CPU at the first tick at or after it (``update_curr()`` from the
tick sees the deadline passed and reschedules): the rest of the vCPU's slice, uniform
over one slice as rom.sh's wake-up displaced it at a random point of it, then the tick's
phase. Traced (``mmbench run rom-access --backend kvm -c 2 -m 256 --passes 20
--rom-interval-ms 1 --rom-read-kib 128 --policy fast-invalidate --trace``: series
``trace:memslot-delete``, ``vmm_first_wake_wait_us`` over 50 us; 6.18, 2 CPUs, HZ 250,
2026-12-03): 54-60 % of the steady-state deletes at 64 and 128 MiB over five runs of
2073-2205 deletes each (median 56 %, the share used; ``--passes 60`` and ``120``), and
56-59 % at 256, 512 and 1024 MiB; the waits ending at a tick (635 of 680, with
``hrtimer_expire_entry`` of ``tick_nohz_handler``), at the first one after the wake-up
in 92-95 % when it came 1-4 ms later and at the second in 70 % when it came within 1 ms,
as a deadline up to 1.4 ms away predicts. Which task the pick chooses depends on both
tasks' lag and deadlines, which the model does not track, so the share is this measured
one (``EEVDF_GP_WAKE_LOSES_PICK``). It is not a constant of the host: it grows with how
long the VMM ran since rom.sh's wake-up. In that trace the VMM ran 1.2-3 ms before the
grace period (the cat's read faults the ROM page by page, see ``KvmVm.add_memslot``); with the
ROM's memory written first it ran 0.6-0.8 ms and the share was 0.28-0.29 (two runs of
3069-3174 deletes at 128 MiB), and the add's grace period, after about 0.1 ms, waits in
6 %. The model's share holds for the measured round only. The delete's second grace
period (after the zap, the VMM having just got the CPU back) and an add's wait so in
3-6 %: not modelled. Under ``cfs`` no wait is modelled (not traced on a CFS host).

Outside mmu_lock the runnable threads share the host CPUs (``Engine.rate``, see
``mmbench.model.engine``): with more of them than CPUs each advances at its fair share,
and a woken thread's work takes its share from the vCPUs. The tick model here is what
decides the lock-break; the share is what decides how fast the rest goes.

What is not modelled: the lag EEVDF keeps across sleeps, and the slice-sized steps of
the real runqueue outside mmu_lock (the model hands out the long-run fair share
continuously).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mmbench.errors import ConfigError

PREEMPT_MODELS = ("none", "voluntary", "full")
SCHEDULERS = ("cfs", "eevdf")  # CONFIG_FAIR_GROUP_SCHED's fair class: before / since 6.6
HZ_CHOICES = (100, 250, 300, 1000)  # kernel/Kconfig.hz
MAX_HOST_CPUS = 8192  # CONFIG_NR_CPUS's upper bound on x86 (MAXSMP)

# The default host (README, "The kernel the model runs"): a distribution kernel of the
# seeds' years (2013-2019: RHEL 6/7, Fedora, Ubuntu all shipped PREEMPT_VOLUNTARY), the
# Kconfig default HZ (HZ_250, also Ubuntu's and this development host's), and 16 CPUs,
# an estimate (range 8-64) of a test server that runs an 8-vCPU guest plus QEMU without
# overcommit. With these, nothing in the default runs is overloaded: no tick-driven
# breaks, and no contention-driven ones either.
DEFAULT_PREEMPT = "voluntary"
DEFAULT_HZ = 250
DEFAULT_HOST_CPUS = 16
DEFAULT_SCHED = "cfs"  # the seeds' kernels (3.x-5.x); 6.6+ hosts run eevdf

SCHED_LATENCY_NS = 6_000_000  # sysctl_sched_latency, before scaling
SCHED_MIN_GRANULARITY_NS = 750_000  # sysctl_sched_min_granularity, before scaling
SCHED_NR_LATENCY = 8  # sched_nr_latency
# EEVDF's sysctl_sched_base_slice, before scaling: 0.70 ms in kernel/sched/fair.c of 6.16+
# and of 6.12.32+ stable (this host's 6.18); 6.6-6.15 had 0.75 ms
SCHED_BASE_SLICE_NS = 700_000
# eevdf, every host CPU busy: the share of the wake-ups from a ROM delete's first grace
# period that find the CPU given to a vCPU (traced on this host; the docstring says how)
EEVDF_GP_WAKE_LOSES_PICK = 0.56


@dataclass(frozen=True)
class KernelConfig:
    """``--preempt``, ``--hz``, ``--host-cpus`` and ``--sched`` of one run (also a config's
    ``kernel:``)."""

    preempt: str = DEFAULT_PREEMPT
    hz: int = DEFAULT_HZ
    host_cpus: int = DEFAULT_HOST_CPUS
    sched: str = DEFAULT_SCHED

    def __post_init__(self) -> None:
        if self.sched not in SCHEDULERS:
            raise ConfigError(
                "--sched", f"must be one of {', '.join(SCHEDULERS)} (got {self.sched!r})"
            )
        if self.preempt not in PREEMPT_MODELS:
            raise ConfigError(
                "--preempt", f"must be one of {', '.join(PREEMPT_MODELS)} (got {self.preempt!r})"
            )
        if not _is_int(self.hz) or self.hz not in HZ_CHOICES:
            raise ConfigError(
                "--hz", f"must be one of {', '.join(map(str, HZ_CHOICES))} (got {self.hz!r})"
            )
        if not _is_int(self.host_cpus) or not 1 <= self.host_cpus <= MAX_HOST_CPUS:
            raise ConfigError(
                "--host-cpus", f"must be an integer 1..{MAX_HOST_CPUS} (got {self.host_cpus!r})"
            )

    @property
    def preemptible(self) -> bool:
        """``preempt_model_preemptible()``: spin_needbreak() reports contention."""
        return self.preempt == "full"

    @property
    def tick_ns(self) -> int:
        return 1_000_000_000 // self.hz

    def as_dict(self) -> dict[str, Any]:
        return {
            "preempt": self.preempt,
            "hz": self.hz,
            "host_cpus": self.host_cpus,
            "sched": self.sched,
        }

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> KernelConfig:
        """From ``{"preempt", "hz", "host_cpus", "sched"}`` (missing keys: the defaults)."""
        opts = dict(options or {})
        unknown = sorted(set(opts) - {"preempt", "hz", "host_cpus", "sched"})
        if unknown:
            raise ConfigError(
                f"kernel.{unknown[0]}", "unknown key (allowed: preempt, hz, host_cpus, sched)"
            )
        return cls(**{k: v for k, v in opts.items() if v is not None})


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def sysctl_factor(cpus: int) -> int:
    """``get_update_sysctl_factor()`` with ``SCHED_TUNABLESCALING_LOG``."""
    return 1 + (min(cpus, 8).bit_length() - 1)


def sched_slice_ns(nr_on_cpu: int, cpus: int) -> int:
    """CFS ``sched_slice()`` of one of ``nr_on_cpu`` equal-weight tasks on a runqueue."""
    f = sysctl_factor(cpus)
    latency, min_gran = SCHED_LATENCY_NS * f, SCHED_MIN_GRANULARITY_NS * f
    period = nr_on_cpu * min_gran if nr_on_cpu > SCHED_NR_LATENCY else latency
    return period // max(1, nr_on_cpu)


class Scheduler:
    """need_resched() from the tick, for the actors of one engine; and the wait of a
    grace period's wake-up that loses the pick (``grace_period_wake_wait_ns``)."""

    def __init__(self, engine: Any, config: KernelConfig) -> None:
        self.engine = engine
        self.config = config
        self._draws = np.random.default_rng(0)  # the picks: the same every run

    def grace_period_wake_wait_ns(self) -> int:
        """How long the VMM, woken from a ROM delete's first grace period, waits for its
        CPU: under ``eevdf`` with more runnable threads than host CPUs, in a share
        ``EEVDF_GP_WAKE_LOSES_PICK`` of them, until the first tick at or after the end of
        the rest of a slice (the vCPU picked first runs to its deadline); else 0."""
        if self.config.sched != "eevdf" or self.engine.nr_running <= self.config.host_cpus:
            return 0
        loses, rest = self._draws.random(2)
        if loses >= EEVDF_GP_WAKE_LOSES_PICK:
            return 0
        now = self.engine.now
        deadline = now + int(rest * self.slice_ns(self.per_cpu()))
        tick = self.config.tick_ns
        return -(-deadline // tick) * tick - now

    def per_cpu(self) -> int:
        """Runnable tasks on the holder's CPU: ``ceil(nr_running / host_cpus)``."""
        return -(-self.engine.nr_running // self.config.host_cpus)

    def resched_at(self, actor: Any) -> int | None:
        """When the tick sets need_resched on ``actor``'s CPU (None: its CPU has no other
        runnable task, so its slice never runs out)."""
        k = self.per_cpu()
        if k <= 1:
            return None
        due = actor.slice_start + self.slice_ns(k)
        tick = self.config.tick_ns
        return -(-due // tick) * tick

    def slice_ns(self, nr_on_cpu: int) -> int:
        """A task's slice: CFS's ``sched_slice()``, or EEVDF's base slice (``update_curr``
        -> ``update_deadline``: the request is ``sysctl_sched_base_slice``, whatever the
        load)."""
        if self.config.sched == "eevdf":
            return SCHED_BASE_SLICE_NS * sysctl_factor(self.config.host_cpus)
        return sched_slice_ns(nr_on_cpu, self.config.host_cpus)

    def need_resched(self, actor: Any) -> bool:
        at = self.resched_at(actor)
        return at is not None and self.engine.now >= at

    def schedule(self) -> None:
        """``schedule()`` from ``cond_resched``: the other tasks of this CPU run their
        slices, then the current actor runs again with a new slice."""
        k = self.per_cpu()
        actor = self.engine.current
        if k > 1:
            self.engine.wait((k - 1) * self.slice_ns(k))
        actor.slice_start = self.engine.now
