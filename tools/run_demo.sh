#!/usr/bin/env bash
# The main job on the embedded default: set up the environment (first run only), fine-tune the tiny
# UNI + ViT-Adapter + Mask2Former on data/ihc, evaluate it against the majority-class baseline and
# segment a held-out image with the large-ROI inferencer. Extra arguments go to tools/demo.py.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "${UNISEG_VENV:-$ROOT/.venv}/bin/python" tools/demo.py "$@"
