"""Thread and allocator settings for a process that runs stratad: :func:`configure_runtime`.

``import stratad`` changes nothing in the host process. The ``stratad`` command applies these
settings first thing (``stratad._entry``); a script or benchmark calls :func:`configure_runtime`
before it imports torch (the OpenMP wait policy is read when libgomp loads).

Threads, measured on the 2-vCPU CI machine: libgomp's default active spin-wait costs ~8 ms per
parallel op once two threads contend for one physical core's worth of throughput, which makes
nearest-neighbour search ~10x slower. A passive wait policy removes that cost; users can still
override every variable.

Memory (:func:`keep_freed_memory`): glibc serves every block above 32 MB with a fresh ``mmap`` and
unmaps it at ``free``, so each forward pass and each feature array pays the kernel's page faults
again; on this (virtual) machine a fault costs ~4 us. Fitting PatchCore on one Lite0 node over 571
MTD images took 16.5 s, 11.5 s of it kernel time; with freed memory kept for reuse it takes 9.3 s
(0.5 s kernel). ``STRATAD_KEEP_FREED_MEMORY=0`` restores glibc's default. (Torch's own
``THP_MEM_ALLOC_ENABLE=1`` huge pages gave 12.7 s, and were slower once many GB were in use,
because the kernel then compacts memory on every fault.)
"""

from __future__ import annotations

import os


def configure_runtime() -> None:
    """Passive OpenMP waiting and glibc's freed-memory reuse for this process (module docstring);
    every variable the user set explicitly wins. Call it before importing torch."""
    # setdefault: an explicit user choice always wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    if os.environ.get("STRATAD_KEEP_FREED_MEMORY", "1") != "0":
        keep_freed_memory()


def keep_freed_memory() -> None:
    """Make glibc reuse freed memory instead of unmapping it (module docstring); for this process.

    Large blocks come from the heap (no ``mmap``), and the heap's free top is handed back to the
    kernel only beyond 2 GB, so memory freed by one pass is reused by the next without page faults.
    The price: a process keeps up to its peak heap (plus 2 GB) until it exits. A no-op where glibc
    is not the C library.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h constants
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**31 - 1)
