"""Guest side: host-built x86-64 page tables and a hand-assembled CPL3 touch loop.

Only 64-bit CPL3 guest code runs natively through KVM's shadow MMU on a
kvm_pvm host (CPL0 code is emulated and builds no sptes), so the guest is a
user-mode program: identity-mapped 4-level page tables with U/S set at every
level, and a code blob that walks a gpa range one qword per page.

Guest physical layout of the "system" memslot (at ``system_gpa``):

    +0x0000  unused page
    +0x1000  code (touch loop, spin loop)
    +0x2000  stack page (the code never pushes; RSP just has to be valid)
    +0x3000  PML4, then PDPT/PD/PT pages allocated on demand

The system area itself is identity-mapped with 2 MiB guest pages; data
regions are identity-mapped with 4 KiB or 2 MiB leaves, chosen per region.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PAGE_SIZE_4K = 4096
PAGE_SIZE_2M = 2 << 20
PAGE_SIZE_1G = 1 << 30

# PTE bits
PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7
PTE_ADDR_MASK = 0x000F_FFFF_FFFF_F000

# I/O ports the guest writes to; the value written is in EAX.
PASS_PORT = 0x10  # end of a pass, EAX = pass index
DONE_PORT = 0x11  # all passes done, EAX = number of passes

CODE_OFFSET = 0x1000
STACK_OFFSET = 0x2000
PT_OFFSET = 0x3000


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


class Asm:
    """A minimal x86-64 byte emitter: raw instruction bytes plus rel8 branches.

    Every instruction carries a comment so the listing documents the blob.
    """

    def __init__(self) -> None:
        self._items: list[tuple[str, bytes | tuple[int, str], str]] = []
        self._labels: dict[str, int] = {}
        self._pos = 0

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"duplicate label {name}")
        self._labels[name] = self._pos

    def emit(self, code: bytes, comment: str) -> None:
        self._items.append(("raw", code, comment))
        self._pos += len(code)

    def branch8(self, opcode: int, target: str, comment: str) -> None:
        """A 2-byte branch (jmp rel8 = 0xEB, jcc rel8 = 0x70+cc) to a label."""
        self._items.append(("br8", (opcode, target), comment))
        self._pos += 2

    def assemble(self) -> tuple[bytes, dict[str, int], str]:
        """Resolve branches; return (code, label offsets, listing)."""
        out = bytearray()
        lines = []
        for kind, payload, comment in self._items:
            at = len(out)
            if kind == "raw":
                assert isinstance(payload, bytes)
                code = payload
            else:
                assert isinstance(payload, tuple)
                opcode, target = payload
                rel = self._labels[target] - (at + 2)
                if not -128 <= rel <= 127:
                    raise ValueError(f"branch to {target} out of rel8 range ({rel})")
                code = bytes([opcode, rel & 0xFF])
            out += code
            names = [n for n, off in self._labels.items() if off == at]
            prefix = "".join(f"{n}:\n" for n in names)
            lines.append(f"{prefix}  {at:04x}  {code.hex(' '):<24} {comment}")
        return bytes(out), dict(self._labels), "\n".join(lines)


JAE = 0x73
JZ = 0x74
JMP = 0xEB


def touch_program() -> tuple[bytes, dict[str, int], str]:
    """Assemble the guest code; returns (bytes, entry offsets, listing).

    Entry "touch" takes its parameters in registers (set via KVM_SET_REGS) so
    one blob serves every vCPU:
        rdi = start gva (identity-mapped, so also the gpa)
        rsi = end gva (exclusive)
        rdx = stride in bytes (4096: one qword per 4 KiB page)
        rcx = passes
        r8  = 1 to write the pass index into each page, 0 to read
    After each pass it does ``out PASS_PORT, eax`` (eax = pass index); after
    the last pass ``out DONE_PORT, eax`` (eax = passes), forever.  Needs
    IOPL=3 in RFLAGS since it runs at CPL3.

    Entry "spin" is ``jmp $``: a guest that never exits, to test kicks.
    """
    a = Asm()
    a.label("touch")
    a.emit(b"\x45\x31\xc9", "xor r9d, r9d        ; r9 = pass index")
    a.label("pass_loop")
    a.emit(b"\x49\x39\xc9", "cmp r9, rcx         ; all passes done?")
    a.branch8(JAE, "done", "jae done")
    a.emit(b"\x48\x89\xfb", "mov rbx, rdi        ; rbx = cursor = start")
    a.label("page_loop")
    a.emit(b"\x48\x39\xf3", "cmp rbx, rsi        ; cursor reached end?")
    a.branch8(JAE, "pass_end", "jae pass_end")
    a.emit(b"\x4d\x85\xc0", "test r8, r8         ; write or read pass?")
    a.branch8(JZ, "do_read", "jz do_read")
    a.emit(b"\x4c\x89\x0b", "mov [rbx], r9       ; write: store pass index")
    a.branch8(JMP, "next", "jmp next")
    a.label("do_read")
    a.emit(b"\x48\x8b\x03", "mov rax, [rbx]      ; read: load one qword")
    a.label("next")
    a.emit(b"\x48\x01\xd3", "add rbx, rdx        ; cursor += stride")
    a.branch8(JMP, "page_loop", "jmp page_loop")
    a.label("pass_end")
    a.emit(b"\x44\x89\xc8", "mov eax, r9d        ; eax = pass index")
    a.emit(bytes([0xE7, PASS_PORT]), f"out {PASS_PORT:#x}, eax      ; pass boundary exit")
    a.emit(b"\x49\xff\xc1", "inc r9              ; next pass")
    a.branch8(JMP, "pass_loop", "jmp pass_loop")
    a.label("done")
    a.emit(b"\x44\x89\xc8", "mov eax, r9d        ; eax = passes completed")
    a.label("done_out")
    a.emit(bytes([0xE7, DONE_PORT]), f"out {DONE_PORT:#x}, eax      ; done exit")
    a.branch8(JMP, "done_out", "jmp done_out        ; if re-entered, say done again")
    a.label("spin")
    a.branch8(JMP, "spin", "jmp spin            ; never exits on its own")
    code, labels, listing = a.assemble()
    return code, {k: labels[k] for k in ("touch", "spin")}, listing


class PageTables:
    """4-level x86-64 page tables built on the host, one numpy row per table page.

    Table pages are bump-allocated at increasing gpas from ``base``; the
    image is the tables laid out contiguously from ``base``.
    """

    def __init__(self, base: int) -> None:
        if base % PAGE_SIZE_4K:
            raise ValueError("page table base must be page aligned")
        self.base = base
        self._tables: list[np.ndarray] = []
        self.root = self._alloc()

    def _alloc(self) -> int:
        self._tables.append(np.zeros(512, dtype=np.uint64))
        return self.base + (len(self._tables) - 1) * PAGE_SIZE_4K

    def _table(self, gpa: int) -> np.ndarray:
        return self._tables[(gpa - self.base) // PAGE_SIZE_4K]

    @property
    def size(self) -> int:
        return len(self._tables) * PAGE_SIZE_4K

    @property
    def end(self) -> int:
        return self.base + self.size

    def _walk(self, va: int, leaf_level: int, accessed: bool) -> np.ndarray:
        """Return the table holding va's entry at leaf_level (1=PT, 2=PD)."""
        table = self._table(self.root)
        for level in (4, 3, 2):
            if level == leaf_level:
                break
            idx = (va >> (12 + 9 * (level - 1))) & 511
            entry = int(table[idx])
            if entry & PTE_P:
                if entry & PTE_PS:
                    raise ValueError(f"{va:#x}: already covered by a large page")
                child = entry & PTE_ADDR_MASK
            else:
                child = self._alloc()
                table[idx] = child | PTE_P | PTE_RW | PTE_US
            if accessed:
                table[idx] |= np.uint64(PTE_A)
            table = self._table(child)
        return table

    def map(
        self,
        gpa: int,
        size: int,
        page_size: int = PAGE_SIZE_4K,
        writable: bool = True,
        accessed: bool = False,
    ) -> None:
        """Identity-map [gpa, gpa+size) with 4 KiB or 2 MiB user pages.

        accessed=True presets the Accessed bits (and Dirty on leaves) the way
        a guest that already used its memory would have them.  That matters
        for the shadow MMU: it only prefetches sptes for neighbouring gptes
        with A set, so fresh tables fault one page at a time while
        "warm" tables map PTE_PREFETCH_NUM pages per fault (when the host
        pages already exist).
        """
        if page_size not in (PAGE_SIZE_4K, PAGE_SIZE_2M):
            raise ValueError("page_size must be 4 KiB or 2 MiB")
        if gpa % page_size or size % page_size or size <= 0:
            raise ValueError(f"[{gpa:#x}, +{size:#x}) not aligned to {page_size:#x}")
        if gpa + size > 1 << 47:
            raise ValueError("beyond 47-bit canonical user range")
        flags = PTE_P | PTE_US | (PTE_RW if writable else 0) | (PTE_A | PTE_D if accessed else 0)
        leaf_level, span = (1, PAGE_SIZE_2M) if page_size == PAGE_SIZE_4K else (2, PAGE_SIZE_1G)
        va = gpa
        end = gpa + size
        while va < end:
            chunk_end = min(end, (va // span + 1) * span)
            table = self._walk(va, leaf_level, accessed)
            first = (va // page_size) & 511
            n = (chunk_end - va) // page_size
            addrs = np.arange(va, chunk_end, page_size, dtype=np.uint64)
            extra = PTE_PS if page_size == PAGE_SIZE_2M else 0
            table[first : first + n] = addrs | np.uint64(flags | extra)
            va = chunk_end

    def lookup(self, va: int) -> tuple[int, int] | None:
        """Software walk: (gpa, page_size) for va, or None if not present."""
        table = self._table(self.root)
        for level in (4, 3, 2, 1):
            entry = int(table[(va >> (12 + 9 * (level - 1))) & 511])
            if not entry & PTE_P:
                return None
            if level == 1 or (level == 2 and entry & PTE_PS):
                page = PAGE_SIZE_4K if level == 1 else PAGE_SIZE_2M
                return (entry & PTE_ADDR_MASK & ~(page - 1)) | (va & (page - 1)), page
            table = self._table(entry & PTE_ADDR_MASK)
        return None

    def image(self) -> bytes:
        return np.concatenate(self._tables).tobytes()


@dataclass
class Region:
    """A gpa range the guest page tables identity-map."""

    gpa: int
    size: int
    page_size: int = PAGE_SIZE_4K
    writable: bool = True
    accessed: bool = False


@dataclass
class SystemImage:
    """Contents of the system memslot plus what a vCPU needs to run it."""

    gpa: int
    data: bytes
    size: int  # memslot size (page aligned, >= len(data))
    cr3: int
    entries: dict[str, int]  # entry name -> gva
    stack_top: int
    listing: str
    page_tables: PageTables = field(repr=False)


class GuestLayout:
    """Collects data regions, then builds the system memslot image.

    Data regions must not overlap the system area; put them at or above
    ``DATA_BASE`` (1 GiB) to leave room for large page tables.
    """

    DATA_BASE = 1 << 30

    def __init__(self, system_gpa: int = 0) -> None:
        if system_gpa % PAGE_SIZE_2M:
            raise ValueError("system area must be 2 MiB aligned")
        self.system_gpa = system_gpa
        self.regions: list[Region] = []

    def map(
        self,
        gpa: int,
        size: int,
        page_size: int = PAGE_SIZE_4K,
        writable: bool = True,
        accessed: bool = False,
    ) -> Region:
        """Add a data region to identity-map (see PageTables.map)."""
        r = Region(gpa, size, page_size, writable, accessed)
        self.regions.append(r)
        return r

    def build(self) -> SystemImage:
        code, entries, listing = touch_program()
        if len(code) > STACK_OFFSET - CODE_OFFSET:
            raise ValueError("code blob does not fit its page")
        pt = PageTables(self.system_gpa + PT_OFFSET)
        for r in self.regions:
            pt.map(r.gpa, r.size, r.page_size, r.writable, r.accessed)
        # Map the system area itself with 2 MiB pages.  That allocates at most
        # a PDPT and a PD, so reserve two pages of slack before rounding.
        sys_span = _align_up(pt.end + 2 * PAGE_SIZE_4K - self.system_gpa, PAGE_SIZE_2M)
        pt.map(self.system_gpa, sys_span, PAGE_SIZE_2M)
        if pt.end > self.system_gpa + sys_span:
            raise AssertionError("system area mapping outgrew its reservation")
        for r in self.regions:
            if r.gpa < self.system_gpa + sys_span and self.system_gpa < r.gpa + r.size:
                raise ValueError(f"region {r.gpa:#x}+{r.size:#x} overlaps the system area")
        img = bytearray(pt.end - self.system_gpa)
        img[CODE_OFFSET : CODE_OFFSET + len(code)] = code
        img[PT_OFFSET:] = pt.image()
        return SystemImage(
            gpa=self.system_gpa,
            data=bytes(img),
            size=_align_up(len(img), PAGE_SIZE_4K),
            cr3=pt.root,
            entries={k: self.system_gpa + CODE_OFFSET + v for k, v in entries.items()},
            stack_top=self.system_gpa + STACK_OFFSET + PAGE_SIZE_4K,
            listing=listing,
            page_tables=pt,
        )
