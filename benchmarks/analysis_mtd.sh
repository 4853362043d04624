#!/bin/sh
# Image-size and backbone analysis on MTD (Heckler et al.): a real-test sweep of every node for
# EfficientNet-Lite0 at 192 / 256 / 320 px and Lite1 / Lite2 at 256 px (PatchCore, coreset 1000,
# max_grid 16, the sweep's default fast coreset), then the oracle selection functions and plots.
# About 25 minutes on the 2-vCPU machine. Sweeps resume if stopped.
#
#     sh benchmarks/analysis_mtd.sh [WORK_DIR]      # default runs/analysis
set -e
cd "$(dirname "$0")/.."
work=${1:-runs/analysis}
mkdir -p "$work"
dirs=""
for spec in efficientnet_lite0:192 efficientnet_lite0:256 efficientnet_lite0:320 efficientnet_lite1:256 efficientnet_lite2:256; do
  backbone=${spec%%:*}
  size=${spec##*:}
  .venv/bin/stratad sweep --data ../shared/datasets/mtd --dataset mtd --backbone "$backbone" \
    --image-size "$size" --max-grid 16 -p coreset_size=1000 --workers 2 --no-progress \
    --out "$work/${backbone}_${size}"
  dirs="$dirs $work/${backbone}_${size}"
done
# shellcheck disable=SC2086
.venv/bin/stratad analyze $dirs --out "$work/oracles"
cp "$work/oracles/oracle.json" benchmarks/results/analysis_mtd_oracle.json
cp "$work/oracles/performance_vs_rf.png" benchmarks/results/analysis_mtd_performance_vs_rf.png
