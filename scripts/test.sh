#!/usr/bin/env bash
# The test command: sets up what is missing, builds, and runs every test (GoogleTest units and
# interop tests, pytest end-to-end tests) under CTest, after the parser tests under ASan and a
# short fuzzing run.
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
# A short libFuzzer run of every parser in the same sanitizer build, two targets at a time (about
# 7 x LLMTUNE_FUZZ_SECONDS / 2), after the build so that its fixtures seed the corpora.
# LLMTUNE_SKIP_FUZZ=1 (or LLMTUNE_SKIP_ASAN=1) skips it; a finding fails the tests (after CTest).
fuzz_status=0
if [[ "${LLMTUNE_SKIP_ASAN:-0}" != 1 && "${LLMTUNE_SKIP_FUZZ:-0}" != 1 ]]; then
  # A fixed seed: the same inputs on every CI run (LLMTUNE_FUZZ_SEED=0 draws one).
  LLMTUNE_FUZZ_SEED=${LLMTUNE_FUZZ_SEED:-1} LLMTUNE_FUZZ_JOBS=${LLMTUNE_FUZZ_JOBS:-2} LLMTUNE_FUZZ_NO_BUILD=1 \
    bash "$here/fuzz.sh" all "${LLMTUNE_FUZZ_SECONDS:-45}" \
    || fuzz_status=$?
fi
ctest_bin=ctest
[[ -x "$LLMTUNE_VENV/bin/ctest" && -z "${LLMTUNE_PYTHON:-}" ]] && ctest_bin="$LLMTUNE_VENV/bin/ctest"
start=$(date +%s)
status=0
"$ctest_bin" --test-dir "$LLMTUNE_BUILD_DIR" --output-on-failure -j "$(nproc)" "$@" || status=$?
log "tests finished in $(( $(date +%s) - start ))s"
((fuzz_status == 0)) || log "fuzzing found a crashing input (see above); it is in tests/fuzz/regressions/"
((status != 0)) && exit $status
exit $fuzz_status
