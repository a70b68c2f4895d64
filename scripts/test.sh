#!/usr/bin/env bash
# The test command: sets up what is missing, builds, and runs every test (GoogleTest units and
# interop tests, pytest end-to-end tests) under CTest, after the parser tests under ASan.
# Extra arguments go to ctest (e.g. -R Config).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"

bash "$here/setup.sh"
# The parsers' tests under AddressSanitizer + UBSan first (their own build in build-asan/), so
# that CTest's summary below is the last thing printed. LLMTUNE_SKIP_ASAN=1 skips them.
if [[ "${LLMTUNE_SKIP_ASAN:-0}" != 1 ]]; then
  bash "$here/test-asan.sh"
fi
bash "$here/build.sh"
ctest_bin=ctest
[[ -x "$LLMTUNE_VENV/bin/ctest" && -z "${LLMTUNE_PYTHON:-}" ]] && ctest_bin="$LLMTUNE_VENV/bin/ctest"
start=$(date +%s)
status=0
"$ctest_bin" --test-dir "$LLMTUNE_BUILD_DIR" --output-on-failure -j "$(nproc)" "$@" || status=$?
log "tests finished in $(( $(date +%s) - start ))s"
exit $status
