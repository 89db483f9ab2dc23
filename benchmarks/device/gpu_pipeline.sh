#!/usr/bin/env bash
# The GPU figures of issue 11 on a lent GPU machine (torch present, no registry): windows/s and peak GPU
# memory of the UNI ViT-L/16 + ViT-Adapter + Mask2Former config (random weights) in bf16, synchronous
# loop against the pipelined reader, on the real H&E slide in data/wsi.
#
#   here:   bash benchmarks/device/prepare_wheels.sh .whl      (and `echo /.whl/ >> .git/info/exclude`)
#   there:  bash benchmarks/device/gpu_pipeline.sh .whl $OUT   (the device tool: carry .whl)
#
# mmcv is compiled there with its CPU ops only (MMCV_WITH_OPS=1 FORCE_CUDA=0, a few minutes on 16 cores),
# so deformable attention runs uniseg's PyTorch path on the GPU; set UNISEG_CUDA_OPS=1 to compile the
# CUDA kernels for sm_90 instead (longer: budget the device time for it). Results go to OUT.
set -euo pipefail
WHL=${1:-.whl}
OUT=${2:-/tmp/uniseg_gpu}
mkdir -p "$OUT" /tmp/site /tmp/mmcv-src
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHL"/*.whl
tar -xzf "$WHL"/mmcv-2.1.0.tar.gz -C /tmp/mmcv-src
SRC=/tmp/mmcv-src/mmcv-2.1.0
# torch >= 2.10 headers need C++20; mmcv hard-codes C++17 (same fix as tools/setup_env.sh)
python3 -c 'import torch,sys; v=tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 10))' \
  && sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
if [ "${UNISEG_CUDA_OPS:-0}" = 1 ]; then
  OPS=(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0)
else
  OPS=(FORCE_CUDA=0)
fi
( cd "$SRC" && env MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" "${OPS[@]}" \
    python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . ) \
  >"$OUT/mmcv_build.log" 2>&1 || { tail -40 "$OUT/mmcv_build.log"; exit 1; }
python3 tools/check_env.py >"$OUT/check_env.txt" 2>&1 || true
nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1 || true
CONFIG=configs/uni/mask2former_uni-adapter-l_8xb2-40k_crag-512x512.py
export PYTHONUNBUFFERED=1
set -o pipefail
python3 benchmarks/bench_pipeline.py --config "$CONFIG" --device cuda --amp --batch-size 16 \
  --workers 0 2 4 8 --json "$OUT/pipeline_vitl_bf16.json" 2>&1 | tee "$OUT/pipeline_vitl_bf16.txt"
