#!/usr/bin/env bash
# Builds the unit tests and the fuzz targets with clang, AddressSanitizer + UBSan and libFuzzer's
# coverage instrumentation into build-asan/ (one build serves both), runs the suites that parse
# untrusted files (safetensors, model dirs, configs, ...), and replays every committed fuzz seed and
# regression input (tests/fuzz/) under the sanitizers. Arguments go to the build (e.g. -j 1).
#   --build-only            build, run nothing (scripts/fuzz.sh builds this way)
# Environment:
#   LLMTUNE_ASAN_BUILD_DIR  build directory (default: build-asan/)
#   LLMTUNE_ASAN_FILTER     replaces the gtest filter below
#   LLMTUNE_ASAN_TARGETS    replaces the targets built (default: llmtune_tests and every fuzz_*)
#   LLMTUNE_SANITIZERS      address,undefined (default) or undefined: UBSan alone at -O2, the fast
#                           fuzzing build of `LLMTUNE_FUZZ_SANITIZERS=undefined scripts/fuzz.sh`
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"

# The parser suites, in gtest filter syntax (':'-separated). Add a new parser's suites here.
ASAN_SUITES="Safetensors*:Gguf*:HfDir*:Config*:Tokenizer*:ChatTemplate*:CausalLMConfig*:DatasetTest*:Batcher*"
FUZZ_TARGETS=(safetensors gguf dataset tokenizer chat_template config adapter_config)

build_only=0
if [[ "${1:-}" == --build-only ]]; then build_only=1; shift; fi

build_dir=${LLMTUNE_ASAN_BUILD_DIR:-$LLMTUNE_ROOT/build-asan}
sanitizers=${LLMTUNE_SANITIZERS:-address,undefined}
# libFuzzer needs clang; a directory configured earlier with another compiler (or without
# LLMTUNE_FUZZ) is configured afresh. ccache keeps what it can.
if [[ -f "$build_dir/CMakeCache.txt" ]] && { ! grep -q '^LLMTUNE_FUZZ:BOOL=ON' "$build_dir/CMakeCache.txt" ||
     ! grep -qx "LLMTUNE_SANITIZERS:STRING=$sanitizers" "$build_dir/CMakeCache.txt"; }; then
  log "reconfiguring $build_dir for clang + libFuzzer ($sanitizers)"
  rm -rf "$build_dir/CMakeCache.txt" "$build_dir/CMakeFiles" "$build_dir/build.ninja"
fi
command -v clang++ >/dev/null || die "clang++ is missing: run scripts/setup.sh (it installs clang and libclang-rt-dev)"
targets=()
if [[ -n "${LLMTUNE_ASAN_TARGETS:-}" ]]; then
  for t in $LLMTUNE_ASAN_TARGETS; do targets+=(--target "$t"); done
else
  targets=(--target llmtune_tests)
  for t in "${FUZZ_TARGETS[@]}"; do targets+=(--target "fuzz_$t"); done
fi
start=$(date +%s)
# CUDA kernels are not parsers and nvcc does not take the sanitizer flags: leave them out.
CC=clang CXX=clang++ LLMTUNE_BUILD_DIR="$build_dir" \
  LLMTUNE_CMAKE_ARGS="-DLLMTUNE_FUZZ=ON -DLLMTUNE_ASAN=ON -DLLMTUNE_SANITIZERS=$sanitizers -DLLMTUNE_CUDA=OFF ${LLMTUNE_CMAKE_ARGS:-}" \
  bash "$here/build.sh" "${targets[@]}" "$@"
log "sanitizer build ($sanitizers: ${LLMTUNE_ASAN_TARGETS:-llmtune_tests and fuzz targets}) done in $(( $(date +%s) - start ))s"
((build_only)) && exit 0

# libtorch is not instrumented: its one-time allocations would read as leaks, and the CUDA
# runtime maps memory in ASan's shadow gap.
export ASAN_OPTIONS="detect_leaks=0:protect_shadow_gap=0:halt_on_error=1:abort_on_error=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
start=$(date +%s)
status=0
"$build_dir/llmtune_tests" --gtest_filter="${LLMTUNE_ASAN_FILTER:-$ASAN_SUITES}" || status=$?
log "ASan tests (${LLMTUNE_ASAN_FILTER:-$ASAN_SUITES}) finished in $(( $(date +%s) - start ))s"

# Every committed seed and regression input, once, under the sanitizers (strict: an exception
# other than llmtune's errors fails as well, see tests/fuzz/README.md).
start=$(date +%s)
for t in "${FUZZ_TARGETS[@]}"; do
  [[ -x "$build_dir/fuzz_$t" ]] || continue
  if ! LLMTUNE_FUZZ_STRICT=1 bash "$LLMTUNE_ROOT/tests/fuzz/replay.sh" "$build_dir/fuzz_$t" "$LLMTUNE_ROOT/tests/fuzz/corpus/$t" \
         "$LLMTUNE_ROOT/tests/fuzz/regressions/$t" >"$build_dir/fuzz-replay-$t.log" 2>&1; then
    tail -n 40 "$build_dir/fuzz-replay-$t.log" >&2
    log "fuzz replay of $t FAILED (log: $build_dir/fuzz-replay-$t.log)"
    status=1
  fi
done
log "fuzz seeds and regressions replayed under ASan in $(( $(date +%s) - start ))s"
exit $status
