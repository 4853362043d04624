#!/usr/bin/env bash
# Installs stratad and its test tools into ./.venv (idempotent). Needs only Python >= 3.10 and the
# package registry; torch/torchvision come from the registry's standard wheels (~100 s, ~5 GB).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q -e ".[dev,study]" 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -c "import stratad, torch, torchvision, timm, faiss; print('stratad', stratad.__version__, 'torch', torch.__version__, 'ready')"
