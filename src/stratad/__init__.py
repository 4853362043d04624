"""stratad: unsupervised visual anomaly detection on pretrained deep features.

Importing stratad has no side effects on the host process; :func:`stratad.runtime.configure_runtime`
applies the thread and allocator settings the command line uses.
"""

from __future__ import annotations

__version__ = "0.1.0"
