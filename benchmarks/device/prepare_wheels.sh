#!/usr/bin/env bash
# Gather, on a machine with the package registry, what the GPU benchmark needs on a machine without
# one: the pure-Python OpenMMLab stack and uniseg's other requirements as py3.12 wheels, and mmcv's
# source (it ships only as an sdist and is compiled there against that machine's torch).
#
#   bash benchmarks/device/prepare_wheels.sh [DEST=.whl]
#
# The GPU image already has torch, timm, numpy, scipy, opencv-python-headless, tifffile, Pillow,
# safetensors, huggingface_hub, tqdm and pyyaml (see the device README); only the rest is fetched.
set -euo pipefail
DEST=${1:-.whl}
mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
WHEELS=(mmengine==0.10.7 mmsegmentation==1.2.2 mmdet==3.3.0 addict yapf termcolor prettytable wcwidth
        terminaltables pycocotools shapely imagecodecs openslide-python openslide-bin albumentations==2.0.8
        albucore pydantic pydantic-core annotated-types typing-inspection stringzilla simsimd ftfy platformdirs
        tomli)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${WHEELS[@]}"
# the sdist's setup.py needs pkg_resources: use the project's environment (setuptools < 70) when there is one
PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$DEST" mmcv==2.1.0
ls -la "$DEST"
du -sh "$DEST"
