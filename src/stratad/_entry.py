"""The ``stratad`` command's entry point: process settings first, then the command line.

Kept apart from :mod:`stratad.cli` because importing the CLI imports torch, and the OpenMP wait
policy must be in the environment before libgomp loads.
"""

from __future__ import annotations


def main() -> None:
    from stratad.runtime import configure_runtime

    configure_runtime()
    from stratad.cli import main as cli_main

    try:
        cli_main()
    except SystemExit as exc:
        fast_exit(exc.code)
    fast_exit(0)


def fast_exit(code: object) -> None:
    """End the command without tearing the interpreter down: run the ``atexit`` handlers, flush the
    standard streams, then ``os._exit``. Every file the commands write is closed (or renamed into
    place) before they return; what is skipped is the module-by-module teardown, which takes 0.4 s
    once torch is imported and 0.8 s with torchvision (its ``torch._dynamo``) — a sixth of a
    `stratad predict` over 83 images (``benchmarks/bench_predict.py``). ``STRATAD_FAST_EXIT=0``
    exits the ordinary way."""
    import atexit
    import os
    import sys

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): Python prints the message and exits with 1
        print(code, file=sys.stderr)
        status = 1
    if os.environ.get("STRATAD_FAST_EXIT", "1") == "0":
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`stratad ... | head`): nothing left to say
            status = status or 1
    os._exit(status)
