#!/usr/bin/env bash
# The main job on the embedded default: set up the environment (first run only); fine-tune the tiny
# UNI + ViT-Adapter + Mask2Former on data/ihc, evaluate it against the majority-class baseline and
# segment a held-out image with the large-ROI inferencer (tools/demo.py; extra arguments go to it); then
# the cells demo on data/nuclei (tools/demo_cells.py).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
PY="${UNISEG_VENV:-$ROOT/.venv}/bin/python"
"$PY" tools/demo.py "$@"
# Cells as objects: an instance model beside connected components of a semantic model on real nuclei,
# then whole-slide cell export (tools/demo_cells.py; about 12 minutes more on 2 CPU cores).
"$PY" tools/demo_cells.py
