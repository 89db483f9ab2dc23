#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the tested OpenMMLab stack.
#
# Why a script: mmcv 2.1.0 ships only as an sdist whose compiled ops must match the installed
# torch ABI, pip's wheel cache ignores that ABI, and torch >= 2.10 needs C++20 where mmcv's
# setup.py hard-codes C++17. Doing this by hand goes wrong on the next machine, so it lives here.
#
# Idempotent: a second run on a ready environment only checks a stamp and returns in seconds.
#
# Knobs (environment variables):
#   UNISEG_VENV         virtual environment path               (default: <repo>/.venv)
#   PYTHON              interpreter used to create the venv    (default: python3)
#   UNISEG_TORCH        torch version                          (default: 2.9.1, the tested one)
#   UNISEG_TORCHVISION  torchvision version                    (default: matched to torch)
#   UNISEG_CUDA         auto | 1 | 0: build mmcv's CUDA ops    (default: auto = a GPU is visible)
#   UNISEG_WHEEL_DIRS   ':'-separated folders searched for a prebuilt mmcv wheel
#                       (default: <repo>/../shared/wheels); only used when torch/python/CUDA match
#   TORCH_CUDA_ARCH_LIST  GPU architectures for a CUDA build   (default: 8.0;8.6;8.9;9.0)
#   MAX_JOBS            compile parallelism                    (default: nproc)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${UNISEG_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${UNISEG_TORCH:-2.9.1}
MMCV_VERSION=2.1.0
WHEEL_DIRS=${UNISEG_WHEEL_DIRS:-$ROOT/../shared/wheels}
WHEEL_CACHE=$ROOT/.cache/wheels
# sha256 of the prebuilt CPU wheel described in ../shared/STACK.md (torch 2.9.1, cp311, x86_64).
SHARED_WHEEL_SHA256=31e797d88e8cf4a3732d970244017f44f54cc7ff34641a29e4eff992d48ede46

log() { printf '[setup_env] %s\n' "$*" >&2; }
die() { printf '[setup_env] error: %s\n' "$*" >&2; exit 1; }

torchvision_for() {
  case "$1" in
    2.9.*) echo 0.24.1 ;;  2.10.*) echo 0.25.0 ;; 2.11.*) echo 0.26.0 ;;
    2.12.*) echo 0.27.0 ;; 2.13.*) echo 0.28.0 ;; 2.14.*) echo 0.29.1 ;;
    *) die "no known torchvision for torch $1; set UNISEG_TORCHVISION" ;;
  esac
}
TORCHVISION_VERSION=${UNISEG_TORCHVISION:-$(torchvision_for "$TORCH_VERSION")}

# ---------------------------------------------------------------- virtual environment
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

CUDA_FLAG=${UNISEG_CUDA:-auto}
if [ "$CUDA_FLAG" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then CUDA_FLAG=1; else CUDA_FLAG=0; fi
fi
[ "$CUDA_FLAG" = 0 ] || [ "$CUDA_FLAG" = 1 ] || die "UNISEG_CUDA must be auto, 0 or 1 (got '$CUDA_FLAG')"

# The stamp names everything that decides the environment's content; equal stamp = nothing to do.
# The installed torch is part of it too, so a torch swapped underneath the venv triggers a rebuild of mmcv.
stamp_inputs() {
  echo "torch=$TORCH_VERSION torchvision=$TORCHVISION_VERSION cuda=$CUDA_FLAG mmcv=$MMCV_VERSION"
  echo "arch_list=${TORCH_CUDA_ARCH_LIST:-}"
  "$PY" -c 'import sys; print(sys.version)'
  "$PY" -c 'import torch; print("installed torch", torch.__version__)' 2>/dev/null || echo "no torch"
  cat "$ROOT/tools/setup_env.sh" "$ROOT/requirements/stack.txt" "$ROOT/setup.cfg"
}
STAMP_FILE="$VENV/.uniseg-env-stamp"
STAMP=$(stamp_inputs | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP" ] \
   && "$PY" -c 'import mmcv.ops, mmseg, mmdet, timm, uniseg' >/dev/null 2>&1; then
  log "environment $VENV is up to date"
  exit 0
fi

# Constraints keep every later install from swapping torch (and with it mmcv's ABI) underneath us.
CONSTRAINTS="$VENV/uniseg-constraints.txt"
# mmcv 2.1.0's setup.py imports pkg_resources, which setuptools >= 82 no longer ships; torch >= 2.10
# requires setuptools >= 77.0.3. The pin goes into the constraints so that installing torch cannot lift it.
case "$TORCH_VERSION" in
  2.[0-9].*) SETUPTOOLS_SPEC='setuptools<70' ;;  # what the tested torch 2.9.1 stack was built with
  *)         SETUPTOOLS_SPEC='setuptools>=77.0.3,<82' ;;
esac
printf 'torch==%s\ntorchvision==%s\nmmcv==%s\n%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" "$MMCV_VERSION" \
  "$SETUPTOOLS_SPEC" >"$CONSTRAINTS"

log "installing build tools and torch $TORCH_VERSION / torchvision $TORCHVISION_VERSION"
"${PIP[@]}" install -q -c "$CONSTRAINTS" setuptools wheel ninja
"${PIP[@]}" install -q -c "$CONSTRAINTS" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

# ---------------------------------------------------------------- mmcv with compiled ops
PY_TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
ARCH=$(uname -m)
VARIANT=$([ "$CUDA_FLAG" = 1 ] && echo cuda || echo cpu)
BUILD_TAG="torch$TORCH_VERSION-$VARIANT-$PY_TAG-$ARCH"
MMCV_MARKER="$VENV/.uniseg-mmcv-build"

mmcv_is_current() {
  [ -f "$MMCV_MARKER" ] && [ "$(cat "$MMCV_MARKER")" = "$BUILD_TAG" ] \
    && "$PY" -c 'import mmcv.ops' >/dev/null 2>&1
}

find_prebuilt_wheel() {
  local cached
  cached=$(ls "$WHEEL_CACHE/$BUILD_TAG"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -n "$cached" ]; then echo "$cached"; return; fi
  # The shared wheel is a CPU build against torch 2.9.1 for CPython 3.11 on x86_64, nothing else.
  [ "$BUILD_TAG" = "torch2.9.1-cpu-cp311-x86_64" ] || return 0
  local dir whl
  IFS=':' read -r -a dirs <<<"$WHEEL_DIRS"
  for dir in "${dirs[@]}"; do
    whl="$dir/mmcv-$MMCV_VERSION-cp311-cp311-linux_x86_64.whl"
    if [ -f "$whl" ]; then
      if [ "$(sha256sum "$whl" | cut -d' ' -f1)" = "$SHARED_WHEEL_SHA256" ]; then echo "$whl"; return; fi
      log "ignoring $whl: checksum differs from the documented build"
    fi
  done
}

build_mmcv_wheel() {
  local work src cxx_std
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  log "building mmcv $MMCV_VERSION ops from source for $BUILD_TAG (about 20 minutes on 2 cores)"
  # --no-build-isolation: reading the sdist's metadata runs its setup.py, which imports pkg_resources;
  # an isolated build environment would get the newest setuptools, which no longer has it.
  "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation --no-cache-dir "mmcv==$MMCV_VERSION" \
    -d "$work"
  tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
  src="$work/mmcv-$MMCV_VERSION"
  # torch >= 2.10 headers refuse C++17 (open-mmlab/mmcv#3341); mmcv hard-codes -std=c++17.
  cxx_std=$("$PY" -c 'import torch; v=tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]); print("c++20" if v >= (2, 10) else "c++17")')
  if [ "$cxx_std" = c++20 ]; then
    log "torch $TORCH_VERSION needs C++20: patching mmcv's setup.py"
    sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  fi
  mkdir -p "$WHEEL_CACHE/$BUILD_TAG"
  if [ "$CUDA_FLAG" = 1 ]; then
    export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;8.6;8.9;9.0}
  else
    unset FORCE_CUDA
  fi
  # --no-cache-dir: a cached mmcv wheel may have been built against another torch.
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" wheel -q --no-cache-dir --no-build-isolation \
    --no-deps "$src" -w "$WHEEL_CACHE/$BUILD_TAG"
}

if mmcv_is_current; then
  log "mmcv $MMCV_VERSION with compiled ops already installed for $BUILD_TAG"
else
  wheel=$(find_prebuilt_wheel)
  if [ -z "$wheel" ]; then
    build_mmcv_wheel
    wheel=$(ls "$WHEEL_CACHE/$BUILD_TAG"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)
  else
    log "using prebuilt mmcv wheel $wheel"
  fi
  "${PIP[@]}" install -q --no-cache-dir --force-reinstall --no-deps "$wheel"
  echo "$BUILD_TAG" >"$MMCV_MARKER"
fi

# ---------------------------------------------------------------- the rest of the stack + uniseg
log "installing the pinned OpenMMLab stack and uniseg (editable, with test extras)"
"${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$ROOT/requirements/stack.txt"
"${PIP[@]}" install -q -c "$CONSTRAINTS" -e "$ROOT[dev]"

"$PY" -c 'import mmcv.ops, mmseg, mmdet, timm, uniseg' || die "the stack was installed but does not import"
stamp_inputs | sha256sum | cut -d' ' -f1 >"$STAMP_FILE"
log "ready: $VENV ($BUILD_TAG)"
