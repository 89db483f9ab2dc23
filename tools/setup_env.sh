#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the tested OpenMMLab stack.
#
# Why a script: mmcv 2.1.0 ships only as an sdist whose compiled ops must match the installed
# torch ABI, pip's wheel cache ignores that ABI, and torch >= 2.10 needs C++20 where mmcv's
# setup.py hard-codes C++17. Doing this by hand goes wrong on the next machine, so it lives here.
#
# CUDA ops are built only where they can be: tools/cuda_build_plan.py looks for a GPU, a CUDA
# build of torch and an nvcc of torch's CUDA major version, says why not when one is missing, and
# the CPU ops are built instead (uniseg then runs deformable attention through PyTorch on the GPU).
# A CUDA build that fails falls back to the CPU ops too, and is not retried until the toolkit,
# torch or the GPU changes.
#
# Idempotent: a second run on a ready environment only checks a stamp and returns in seconds.
#
# Knobs (environment variables):
#   UNISEG_VENV         virtual environment path               (default: <repo>/.venv)
#   PYTHON              interpreter used to create the venv    (default: python3)
#   UNISEG_TORCH        torch version                          (default: 2.9.1, the tested one)
#   UNISEG_TORCHVISION  torchvision version                    (default: matched to torch)
#   UNISEG_CUDA         auto | 1 | 0: mmcv's CUDA ops          (default: auto)
#                       auto: CUDA ops when they can be built, else (or when their build fails) the CPU ops;
#                       1: CUDA ops or stop with the reason (also without a visible GPU: building for
#                       GPU nodes on a login node); 0: CPU ops only
#   CUDA_HOME           the CUDA toolkit to build with         (default: nvcc on PATH, /usr/local/cuda,
#                       /usr/local/cuda-X.Y matching torch's CUDA; see tools/cuda_build_plan.py)
#   UNISEG_CUDA_PREFIX  folder searched for cuda and cuda-X.Y toolkits (default: /usr/local)
#   UNISEG_WHEEL_DIRS   ':'-separated folders searched for a prebuilt mmcv wheel
#                       (default: <repo>/../shared/wheels); only used when torch/python/CUDA match
#   UNISEG_WHEEL_CACHE  where mmcv wheels built here are kept, per build tag (default: <repo>/.cache/wheels)
#   TORCH_CUDA_ARCH_LIST  GPU architectures for a CUDA build   (default: 8.0;8.6;8.9;9.0)
#   MAX_JOBS            compile parallelism                    (default: nproc)
#   UNISEG_SETUP_PLAN_ONLY=1  print the CUDA decision and what the mmcv step would do, then exit
#                       without creating or changing anything
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${UNISEG_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${UNISEG_TORCH:-2.9.1}
MMCV_VERSION=2.1.0
WHEEL_DIRS=${UNISEG_WHEEL_DIRS:-$ROOT/../shared/wheels}
WHEEL_CACHE=${UNISEG_WHEEL_CACHE:-$ROOT/.cache/wheels}
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

CUDA_FLAG=${UNISEG_CUDA:-auto}
case "$CUDA_FLAG" in auto | 0 | 1) ;; *) die "UNISEG_CUDA must be auto, 0 or 1 (got '$CUDA_FLAG')" ;; esac
PLAN_SCRIPT="$ROOT/tools/cuda_build_plan.py"
SLOW_PATH="deformable attention runs uniseg's PyTorch path on the GPU (slower)"

# What the environment records about its mmcv (tools/check_env.py reads these files too).
STAMP_FILE="$VENV/.uniseg-env-stamp"          # hash of every input: equal = nothing to do
MMCV_MARKER="$VENV/.uniseg-mmcv-build"        # build tag of the installed mmcv: torch, cpu|cuda, python, arch
PLAN_RECORD="$VENV/.uniseg-cuda-plan.json"    # the CUDA decision behind it, with reason and fix
CUDA_FAILED="$VENV/.uniseg-mmcv-cuda-failed"  # plan key + log of a failed CUDA build (not retried for that key)
build_log() { echo "$VENV/uniseg-mmcv-build-$1.log"; }  # the compiler's output, per variant

# ---------------------------------------------------------------- the CUDA decision
# run_plan PYTHON: sets PLAN_ACTION (cuda|cpu|fail), PLAN_KEY, PLAN_CUDA_HOME, PLAN_GPU, PLAN_TOOLKIT_BLOCKS,
# PLAN_REASON, PLAN_FIX, PLAN_MESSAGE and PLAN_JSON. It reads torch's version file, never imports torch.
run_plan() {
  local out
  out=$(UNISEG_CUDA="$CUDA_FLAG" "$1" "$PLAN_SCRIPT" --shell) || die "$PLAN_SCRIPT failed (see above)"
  eval "$out"
}
say_plan() {
  local line
  while IFS= read -r line; do log "$line"; done <<<"$PLAN_MESSAGE"
}

# ---------------------------------------------------------------- where mmcv comes from
build_tag() { echo "torch$TORCH_VERSION-$1-$PY_TAG-$ARCH"; }

installed_tag_is() {
  [ -f "$MMCV_MARKER" ] && [ "$(cat "$MMCV_MARKER")" = "$1" ] && "$PY" -c 'import mmcv.ops' >/dev/null 2>&1
}

find_prebuilt_wheel() {
  local cached
  cached=$(ls "$WHEEL_CACHE/$1"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -n "$cached" ]; then echo "$cached"; return; fi
  # The shared wheel is a CPU build against torch 2.9.1 for CPython 3.11 on x86_64, nothing else.
  [ "$1" = "torch2.9.1-cpu-cp311-x86_64" ] || return 0
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

# mmcv_source_for TAG: "installed", a wheel file to install, or "build".
mmcv_source_for() {
  if installed_tag_is "$1"; then echo installed; return; fi
  local wheel
  wheel=$(find_prebuilt_wheel "$1")
  echo "${wheel:-build}"
}

# choose_variant: VARIANT=cuda|cpu from the plan, a CUDA build that already failed for this plan, and an
# installed CUDA build that is worth keeping.
choose_variant() {
  VARIANT=$PLAN_ACTION
  if [ "$VARIANT" = cuda ] && [ "$CUDA_FLAG" = auto ] && [ -f "$CUDA_FAILED" ] \
     && [ "$(head -n 1 "$CUDA_FAILED")" = "$PLAN_KEY" ]; then
    log "the CUDA build of mmcv failed before with this toolkit and torch (log: $(build_log cuda)):"
    log "using the CPU ops instead; UNISEG_CUDA=1 retries the CUDA build"
    VARIANT=cpu
  fi
  # Only the toolkit is missing (e.g. a new shell without `module load cuda`): compiled CUDA ops that are
  # already installed for this torch run without it, and a rebuild would only make things slower.
  if [ "$VARIANT" = cpu ] && [ "$CUDA_FLAG" = auto ] && [ "$PLAN_TOOLKIT_BLOCKS" = 1 ] \
     && installed_tag_is "$(build_tag cuda)"; then
    log "keeping the installed mmcv with CUDA ops ($(build_tag cuda)): it runs without the toolkit"
    VARIANT=cuda
  fi
}

# ---------------------------------------------------------------- plan only: say what would happen
if [ "${UNISEG_SETUP_PLAN_ONLY:-0}" = 1 ]; then
  PY="$VENV/bin/python"
  [ -x "$PY" ] || PY=$PYTHON  # the interpreter the venv would be created from
  run_plan "$PY"
  say_plan
  if [ "$PLAN_REASON_CODE" = no-torch ]; then
    die "torch is not installed yet for $PY: set UNISEG_PLAN_TORCH_CUDA to the CUDA version of the torch the set-up will install (12.8 for the default torch 2.9.1 wheel) to see the decision"
  fi
  [ "$PLAN_ACTION" != fail ] || die "mmcv's ops cannot be built as asked (see above)"
  PY_TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  ARCH=$(uname -m)
  choose_variant
  BUILD_TAG=$(build_tag "$VARIANT")
  from=$(mmcv_source_for "$BUILD_TAG")
  case "$from" in
    installed) log "plan: mmcv $MMCV_VERSION is already installed for $BUILD_TAG" ;;
    build)
      log "plan: build mmcv $MMCV_VERSION with $VARIANT ops from source for $BUILD_TAG${PLAN_CUDA_HOME:+ (CUDA_HOME=$PLAN_CUDA_HOME)}"
      if [ "$VARIANT" = cuda ] && [ "$CUDA_FLAG" = 1 ]; then
        log "plan: if the CUDA build fails: stop (UNISEG_CUDA=1)"
      elif [ "$VARIANT" = cuda ]; then
        log "plan: if the CUDA build fails: fall back to the CPU ops ($(build_tag cpu))"
      fi ;;
    *) log "plan: install the prebuilt mmcv wheel $from for $BUILD_TAG" ;;
  esac
  log "plan only (UNISEG_SETUP_PLAN_ONLY=1): nothing was created or installed"
  exit 0
fi

# ---------------------------------------------------------------- virtual environment
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# The stamp names everything that decides the environment's content; equal stamp = nothing to do.
# The CUDA decision's inputs are part of it (the installed torch and its CUDA version, whether a GPU is
# visible, which toolkits exist): a CPU fallback is reconsidered as soon as a matching toolkit appears.
run_plan "$PY"
stamp_inputs() {
  echo "torch=$TORCH_VERSION torchvision=$TORCHVISION_VERSION cuda=$CUDA_FLAG mmcv=$MMCV_VERSION"
  echo "arch_list=${TORCH_CUDA_ARCH_LIST:-} cuda_plan=$PLAN_KEY"
  "$PY" -c 'import sys; print(sys.version)'
  cat "$ROOT/tools/setup_env.sh" "$PLAN_SCRIPT" "$ROOT/requirements/stack.txt" "$ROOT/setup.cfg"
}
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
run_plan "$PY"  # again: torch (and with it torch.version.cuda) may just have changed
say_plan
[ "$PLAN_ACTION" != fail ] || die "mmcv's ops cannot be built as asked (see above)"
PY_TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
ARCH=$(uname -m)

MMCV_SRC=""
MMCV_WORK=""
fetch_mmcv_source() {
  [ -z "$MMCV_SRC" ] || return 0
  local work cxx_std
  MMCV_WORK=$(mktemp -d)
  trap 'rm -rf "$MMCV_WORK"' EXIT
  work=$MMCV_WORK
  # --no-build-isolation: reading the sdist's metadata runs its setup.py, which imports pkg_resources;
  # an isolated build environment would get the newest setuptools, which no longer has it.
  "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation --no-cache-dir "mmcv==$MMCV_VERSION" \
    -d "$work"
  tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
  MMCV_SRC="$work/mmcv-$MMCV_VERSION"
  # torch >= 2.10 headers refuse C++17 (open-mmlab/mmcv#3341); mmcv hard-codes -std=c++17.
  cxx_std=$("$PY" -c 'import torch; v=tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]); print("c++20" if v >= (2, 10) else "c++17")')
  if [ "$cxx_std" = c++20 ]; then
    log "torch $TORCH_VERSION needs C++20: patching mmcv's setup.py"
    sed -i 's/-std=c++17/-std=c++20/g' "$MMCV_SRC/setup.py"
  fi
}

# compile_mmcv_wheel VARIANT TAG: the wheel lands in the wheel cache; its status is the build's.
# Runs in a condition, where bash ignores `set -e`: every step checks its own status.
compile_mmcv_wheel() {
  local out="$WHEEL_CACHE/$2"
  local -a build_env=(MMCV_WITH_OPS=1 "MAX_JOBS=${MAX_JOBS:-$(nproc)}")
  if [ "$1" = cuda ]; then
    build_env+=(FORCE_CUDA=1 "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;8.6;8.9;9.0}")
    [ -z "$PLAN_CUDA_HOME" ] || build_env+=("CUDA_HOME=$PLAN_CUDA_HOME")
  else
    # mmcv's setup.py compiles its CUDA ops whenever torch sees a GPU: hide the GPUs for a CPU build.
    build_env+=(FORCE_CUDA=0 CUDA_VISIBLE_DEVICES=)
  fi
  mkdir -p "$out" || return 1
  log "building mmcv $MMCV_VERSION with $1 ops from source for $2 (about 20 minutes on 2 cores; log: $(build_log "$1"))"
  # --no-cache-dir: a cached mmcv wheel may have been built against another torch.
  env "${build_env[@]}" "${PIP[@]}" wheel -v --no-cache-dir --no-build-isolation --no-deps "$MMCV_SRC" \
    -w "$out" >"$(build_log "$1")" 2>&1
}

# show_build_failure VARIANT: the compiler's first errors and the end of the log.
show_build_failure() {
  local file
  file=$(build_log "$1")
  log "the $1 build of mmcv failed; its errors and the end of the log ($file):"
  { grep -E 'error|FAILED:|fatal' "$file" | head -n 15 || true; echo "..."; tail -n 25 "$file"; } \
    | sed 's/^/    /' >&2
}

# provide_mmcv VARIANT: install mmcv with VARIANT ops unless it is there already; MMCV_BUILD_FAILED=1 when
# compiling failed (anything else stops the script).
provide_mmcv() {
  local from
  BUILD_TAG=$(build_tag "$1")
  MMCV_BUILD_FAILED=0
  from=$(mmcv_source_for "$BUILD_TAG")
  case "$from" in
    installed) log "mmcv $MMCV_VERSION with compiled ops already installed for $BUILD_TAG"; return ;;
    build)
      fetch_mmcv_source
      compile_mmcv_wheel "$1" "$BUILD_TAG" || { MMCV_BUILD_FAILED=1; return; }
      from=$(ls "$WHEEL_CACHE/$BUILD_TAG"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1) ;;
    *) log "using prebuilt mmcv wheel $from" ;;
  esac
  "${PIP[@]}" install -q --no-cache-dir --force-reinstall --no-deps "$from"
  echo "$BUILD_TAG" >"$MMCV_MARKER"
}

choose_variant
provide_mmcv "$VARIANT"
if [ "$MMCV_BUILD_FAILED" = 1 ]; then
  show_build_failure "$VARIANT"
  [ "$VARIANT" = cuda ] || die "mmcv could not be built (see above)"
  [ "$CUDA_FLAG" != 1 ] || die "UNISEG_CUDA=1: the CUDA build of mmcv failed (see above)"
  printf '%s\n%s\n' "$PLAN_KEY" "$(build_log cuda)" >"$CUDA_FAILED"
  log "falling back to mmcv's CPU ops: $SLOW_PATH; the CUDA build is retried when the toolkit, torch or"
  log "the GPU changes, or with UNISEG_CUDA=1"
  VARIANT=cpu
  provide_mmcv cpu
  [ "$MMCV_BUILD_FAILED" = 0 ] || { show_build_failure cpu; die "mmcv could not be built (see above)"; }
elif [ "$VARIANT" = cuda ]; then
  rm -f "$CUDA_FAILED"
fi
printf '%s\n' "$PLAN_JSON" >"$PLAN_RECORD.tmp" && mv "$PLAN_RECORD.tmp" "$PLAN_RECORD"

# ---------------------------------------------------------------- the rest of the stack + uniseg
log "installing the pinned OpenMMLab stack and uniseg (editable, with test extras)"
"${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$ROOT/requirements/stack.txt"
"${PIP[@]}" install -q -c "$CONSTRAINTS" -e "$ROOT[dev]"

"$PY" -c 'import mmcv.ops, mmseg, mmdet, timm, uniseg' || die "the stack was installed but does not import"
stamp_inputs | sha256sum | cut -d' ' -f1 >"$STAMP_FILE"
log "ready: $VENV ($BUILD_TAG)"
if [ "$VARIANT" = cpu ] && [ "$PLAN_GPU" = 1 ]; then
  log "note: mmcv has CPU ops only although a GPU is visible, so $SLOW_PATH"
  [ "$PLAN_ACTION" = cpu ] && log "why: $PLAN_REASON" || log "why: its CUDA build failed (log: $(build_log cuda))"
  [ -z "$PLAN_FIX" ] || log "fix: $PLAN_FIX"
fi
