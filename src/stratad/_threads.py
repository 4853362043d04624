"""Thread settings, applied before torch is imported.

Measured on the 2-vCPU CI machine: libgomp's default active spin-wait costs ~8 ms per parallel op
once two threads contend for one physical core's worth of throughput, which makes nearest-neighbour
search ~10x slower. A passive wait policy removes that cost; users can still override every variable.
"""

from __future__ import annotations

import os


def configure_threads() -> None:
    # setdefault: an explicit user choice always wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")
