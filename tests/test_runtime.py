"""``import stratad`` leaves the host process alone; the command line applies its settings itself."""

from __future__ import annotations

import os
import subprocess
import sys

CHECK = """
import os, sys
for name in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME"):
    os.environ.pop(name, None)
import stratad, stratad.cli, stratad.pipeline, stratad.selection
print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("KMP_BLOCKTIME"))
from stratad.runtime import configure_runtime
configure_runtime()
print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("KMP_BLOCKTIME"))
"""


def test_import_has_no_side_effects_and_configure_runtime_applies_settings() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["None None", "PASSIVE 0"]


def test_an_explicit_user_setting_wins() -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}
    code = (
        "import os; from stratad.runtime import configure_runtime; configure_runtime(); "
        "print(os.environ['OMP_WAIT_POLICY'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_the_command_line_starts_without_torch() -> None:
    """`stratad --help` and a usage error answer without importing torch (2-3 s here); the lazy
    package attributes still resolve."""
    import subprocess
    import sys

    code = (
        "import sys, stratad.cli, stratad.workflows as w, stratad.selection as s\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "[getattr(w, n) for n in w.__all__]; [getattr(s, n) for n in s.__all__]\n"
        "print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
