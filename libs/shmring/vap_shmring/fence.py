"""Memory fences for the seqlock, chosen per CPU architecture.

Why fences are needed at all: the writer's sequence is ``gen = odd; pixels = ...; gen = even`` and the
reader's is ``g1 = gen; use pixels; g2 = gen``. Another core must never see the even store before the
pixel stores, nor the reader's pixel loads be satisfied before its ``g1`` load (or after its ``g2``
load). numpy, OpenCV and FFmpeg write with plain stores, and CPython offers no atomics, so:

x86-64 (TSO): the hardware never reorders a store with an older store nor a load with an older load,
    which is exactly what a seqlock needs. What is left is the compiler, and every step here is a
    separate call through the interpreter into opaque C code, so no C compiler can move memory accesses
    across them. Readers therefore need no fence. The writer still issues one real full fence (mfence via
    libatomic, ~0.4 us, once per frame) before publishing: non-temporal (``movnt``) stores used by large
    memcpy/convert loops are *not* ordered by TSO; glibc and FFmpeg end such loops with ``sfence``
    themselves, the writer fence makes that independent of whatever library filled the slot.

aarch64 (and other weakly ordered CPUs): stores and loads are freely reordered, so both sides need real
    barriers: the writer after the odd store and before the even store (store->store), the reader after
    ``g1`` and before ``g2`` (load->load, i.e. the C11 acquire fence of Boehm's seqlock recipe). We call
    C11 ``atomic_thread_fence(memory_order_seq_cst)`` exported by libatomic (``dmb ish``); without
    libatomic we fall back to the ``membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`` syscall, which the
    kernel brackets with ``smp_mb()`` on the calling CPU and which needs no registration.
    Helper threads that write pixels (FFmpeg/OpenCV thread pools) are covered too: the library joins them
    (a release/acquire pair) before returning to the writer, and ARMv8 is multi-copy atomic, so their
    stores are ordered before the writer's fence.

The generation words themselves are naturally aligned 8-byte words read and written with single 64-bit
loads and stores (memoryview 'Q' items), which are single-copy atomic on both architectures.

``VAP_SHMRING_FENCE`` = ``libatomic`` | ``membarrier`` | ``none`` overrides the choice (tests use it to
exercise the strong path on x86; ``none`` is only sane on x86).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Callable

Fence = Callable[[], None]

_SEQ_CST = 5  # memory_order_seq_cst in C11's enum
_MEMBARRIER_CMD_GLOBAL_EXPEDITED = 1 << 1
_MEMBARRIER_SYSCALL = {
    "x86_64": 324,
    "aarch64": 283,
    "arm64": 283,
    "riscv64": 283,
    "ppc64le": 365,
    "s390x": 356,
}
_TSO_MACHINES = {"x86_64", "amd64", "i386", "i686"}


def _noop() -> None:
    """Compiler-only barrier: crossing the interpreter already is one."""


def _libatomic_fence() -> Fence | None:
    name = ctypes.util.find_library("atomic") or "libatomic.so.1"
    try:
        fn = ctypes.CDLL(name).atomic_thread_fence
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = None

    def fence() -> None:
        fn(_SEQ_CST)

    return fence


def _membarrier_fence() -> Fence | None:
    number = _MEMBARRIER_SYSCALL.get(platform.machine().lower())
    if number is None:
        return None
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.restype = ctypes.c_long
    if syscall(number, _MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) != 0:  # ENOSYS, or EPERM under seccomp
        return None

    def fence() -> None:
        syscall(number, _MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0)

    return fence


def _unavailable() -> None:
    raise RuntimeError(
        f"vap_shmring: no memory fence available on {platform.machine()} "
        "(install libatomic1, or allow the membarrier syscall)"
    )


def _strong_fence(choice: str) -> tuple[str, Fence]:
    if choice in ("", "auto", "libatomic"):
        fence = _libatomic_fence()
        if fence is not None:
            return "libatomic", fence
    if choice in ("", "auto", "membarrier"):
        fence = _membarrier_fence()
        if fence is not None:
            return "membarrier", fence
    return "unavailable", _unavailable


def _select() -> tuple[str, Fence, Fence]:
    """(name, writer fence, reader fence)."""
    choice = os.environ.get("VAP_SHMRING_FENCE", "auto").lower()
    tso = platform.machine().lower() in _TSO_MACHINES
    if choice == "none":
        return "none", _noop, _noop
    name, strong = _strong_fence(choice)
    if tso:
        # Reads never need a fence on TSO; the writer keeps a real one when it can get it, else a no-op
        # (plain stores are already ordered on x86).
        return name, (strong if name != "unavailable" else _noop), _noop
    return name, strong, strong


FENCE_KIND, writer_fence, reader_fence = _select()
