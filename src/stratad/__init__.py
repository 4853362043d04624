"""stratad: unsupervised visual anomaly detection on pretrained deep features."""

from __future__ import annotations

from stratad._threads import configure_threads

configure_threads()

__version__ = "0.1.0"
