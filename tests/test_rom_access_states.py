"""ROM deletes by the state of the guest: populating, running, idle (``--idle-reads``),
and a RAM slot deleted under the running guest (``--delete-ram-after-pass``)."""

from __future__ import annotations

from conftest import run_json

SMALL = ["rom-access", "-c", "2", "-m", "256", "--passes", "4", "--rom-interval-ms", "20"]


def metrics(*args: str) -> dict[str, dict]:
    doc = run_json(*SMALL, *args)
    return {r["policy"]: r["metrics"] for r in doc["results"]}


def test_deletes_split_by_population_state_and_idle_reads(runs_dir):
    m = metrics("--idle-reads", "3", "--policy", "zap-all", "--policy", "zap-slot")
    za, zs = m["zap-all"], m["zap-slot"]
    for r in (za, zs):
        assert r["memslot_delete_populating_ms"] > 0 and r["memslot_delete_p50_ms"] > 0
        assert r["memslot_delete_p50_ms"] <= r["memslot_delete_p99_ms"]
        assert r["memslot_delete_p99_ms"] <= r["memslot_delete_max_ms"]
    # the first idle delete still finds the whole guest mapped; zap-slot only the ROM
    assert za["memslot_delete_idle_max_ms"] > 10 * zs["memslot_delete_idle_max_ms"] > 0
    assert za["memslot_delete_idle_p50_ms"] <= za["memslot_delete_idle_max_ms"]
    assert za["sps_per_delete"] > 0 == zs["sps_per_delete"]
    assert zs["sptes_per_delete"] == 63 / 32  # each 4 KiB read: the header page, its chunk
    plain = metrics("--policy", "zap-all")["zap-all"]
    assert plain["memslot_delete_idle_p50_ms"] == plain["memslot_delete_idle_max_ms"] == -1
    assert za["rom_cats"] == plain["rom_cats"] + 3
    assert za["rom_reads"] == plain["rom_reads"] + 3 * 32
    assert za["memslot_delete_ms"] == plain["memslot_delete_ms"]  # idle deletes apart


def test_deleting_the_ram_slot_under_the_guest_shuts_every_vcpu_down(runs_dir):
    m = metrics("--delete-ram-after-pass", "2", "--rom-interval-ms", "1", "--check")
    for r in m.values():
        assert r["vcpu_shutdowns"] == 2


def test_each_read_of_the_cat_remaps_the_rom(runs_dir):
    """sysfs passes the rom attribute PAGE_SIZE per read(), and pci_read_rom() maps and
    unmaps the BAR each time: a 128 KiB ROM is 32 memslot adds and deletes per cat, each
    reading the header page and its chunk; ``--rom-read-kib 128`` is one per cat."""
    per_page = metrics("--policy", "zap-slot", "--policy", "zap-all")
    whole = metrics("--policy", "zap-slot", "--policy", "zap-all", "--rom-read-kib", "128")
    for m in (per_page, whole):
        assert m["zap-slot"]["rom_cats"] > 0 and m["zap-all"]["rom_cats"] > 0
    zs, za = per_page["zap-slot"], per_page["zap-all"]
    assert zs["rom_reads"] == 32 * zs["rom_cats"]
    assert whole["zap-slot"]["rom_reads"] == whole["zap-slot"]["rom_cats"]
    # zap-slot zaps what each read mapped: the header page, and its chunk after the first
    assert zs["sptes_per_cat"] == 1 + 2 * 31 and whole["zap-slot"]["sptes_per_cat"] == 32
    # zap-all: the cat's first delete finds what the vCPUs refaulted since the last cat;
    # the 31 after it find only what was refaulted in between
    assert za["memslot_delete_first_p50_ms"] > 5 * za["memslot_delete_p50_ms"]
    assert za["sptes_per_cat"] > za["sptes_per_delete"]
