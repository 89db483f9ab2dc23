#!/usr/bin/env bash
# The test suite on a fresh machine: set up the environment (first run only), check it, run pytest.
# Extra arguments go to pytest (e.g. -k adapter, -x).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
PY="${UNISEG_VENV:-$ROOT/.venv}/bin/python"
"$PY" tools/check_env.py
# pytest exits 5 when it collects nothing: a suite that silently vanished is a failure, not a pass.
set +e
"$PY" -m pytest -p no:cacheprovider -m "slow or not slow" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests" >&2
fi
exit "$rc"
