#!/usr/bin/env bash
# The test command: sets up what is missing, builds, and runs every test (GoogleTest units and
# interop tests, pytest end-to-end tests) under CTest. Extra arguments go to ctest (e.g. -R Config).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"

bash "$here/setup.sh"
bash "$here/build.sh"
ctest_bin=ctest
[[ -x "$LLMTUNE_VENV/bin/ctest" && -z "${LLMTUNE_PYTHON:-}" ]] && ctest_bin="$LLMTUNE_VENV/bin/ctest"
start=$(date +%s)
status=0
"$ctest_bin" --test-dir "$LLMTUNE_BUILD_DIR" --output-on-failure -j "$(nproc)" "$@" || status=$?
log "tests finished in $(( $(date +%s) - start ))s"
exit $status
