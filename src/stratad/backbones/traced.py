"""A node extractor traced to TorchScript and carried in the model file, so that scoring with a
saved model needs neither the backbone's builder (timm, torchvision) nor its weight files.

Why: ``import timm`` imports torchvision, whose ``ops`` import ``torch._dynamo``; together they take
~1.3 s of a 4.7 s `stratad predict` over 83 images, and ~0.4 s more to tear down at exit
(``benchmarks/bench_predict.py``). A traced extractor loads in ~50 ms with torch alone. It also
makes the model file self-contained: it predicts on a machine without the pretrained weights.

The trace is made at save time, on the CPU, for one image at the model's input size, and kept only
when it reproduces the extractor's outputs bit for bit on a random image (both with one thread);
otherwise (a backbone the tracer cannot follow) the file carries none and loading builds the
backbone as before. A TorchScript archive runs only TorchScript operators (no Python), and its bytes
are covered by the model file's digest like every tensor.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import torch

#: The model-file tensor holding the TorchScript archive (uint8 bytes).
TRACED_KEY = "extractor.torchscript"


class TracedExtractor:
    """``images (1, 3, S, S) in [0, 1] -> {node: float32 features}`` through a TorchScript module,
    under ``torch.inference_mode``, with graph optimisations off (the archive runs op by op, as the
    extractor it was traced from)."""

    def __init__(
        self, module: torch.jit.ScriptModule, nodes: Sequence[str], image_size: int, archive: torch.Tensor
    ) -> None:
        self.module = module
        self.nodes = list(nodes)
        self.image_size = image_size
        #: the archive it was loaded from (saved again as it is)
        self.archive = archive

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            out = self.module(images)
        return {node: out[node] for node in self.nodes}


def trace_extractor(extractor: torch.nn.Module, nodes: Sequence[str], image_size: int) -> torch.Tensor | None:
    """The TorchScript archive of ``extractor`` (a CPU :class:`~stratad.backbones.NodeExtractor`)
    as a uint8 tensor, or None when tracing fails or the trace's outputs differ from the extractor's."""
    probe = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count picks kernels: compare like with like
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape checks, deprecation notices
            traced = torch.jit.trace(extractor.eval(), probe, strict=False, check_trace=False)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
        data = buffer.getvalue()
        archive = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        loaded = load_traced(archive, nodes, image_size)  # read back exactly as a loaded file is
        if loaded is None:
            return None
        expected = extractor(probe)
        got = loaded(probe)
    except Exception:
        return None
    finally:
        torch.set_num_threads(threads)
    if list(got) != list(expected) or not all(torch.equal(got[n], expected[n]) for n in expected):
        return None
    return archive


def load_traced(data: torch.Tensor, nodes: Sequence[str], image_size: int) -> TracedExtractor | None:
    """The extractor in ``data`` (from :func:`trace_extractor`), on the CPU; None when this torch
    cannot read it (an archive from another torch version): the caller then builds the backbone.
    Whether it runs is found out by the pipeline's load check, which scores a blank image through it
    (:meth:`stratad.pipeline.Pipeline._check_runs`) and falls back to the backbone when it fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            module = torch.jit.load(io.BytesIO(data.numpy().tobytes()), map_location="cpu")
    except Exception:  # unreadable here: fall back to building the backbone
        return None
    return TracedExtractor(module.eval(), nodes, image_size, data)
