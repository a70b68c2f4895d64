#!/usr/bin/env bash
# Coverage-guided fuzzing of llmtune's parsers (tests/fuzz/README.md) with libFuzzer under
# AddressSanitizer + UBSan, in the sanitizer build of scripts/test-asan.sh (built when needed), or
# under UBSan alone at -O2 (LLMTUNE_FUZZ_SANITIZERS=undefined: 3-10x the executions a second, for
# long campaigns; memory errors then show only when they crash).
#   scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]   one target
#   scripts/fuzz.sh all SECONDS [libFuzzer flags...]      every target, SECONDS each
# Targets: safetensors gguf dataset tokenizer chat_template config adapter_config.
# The working corpus is build-asan/fuzz-corpus/TARGET/ (kept between runs), read together with the
# committed seeds (tests/fuzz/corpus/TARGET/), seeds derived from the fixtures and the regression
# inputs. An input that crashes, hangs or runs out of memory is copied to
# tests/fuzz/regressions/TARGET/ (replayed by the tests from then on) and the script fails.
# Environment:
#   LLMTUNE_FUZZ_SANITIZERS address,undefined (default) or undefined
#   LLMTUNE_ASAN_BUILD_DIR  the sanitizer build (default: build-asan/, or build-fuzz-ubsan/ for
#                           LLMTUNE_FUZZ_SANITIZERS=undefined)
#   LLMTUNE_FUZZ_JOBS       targets fuzzed at once by `all` (default 1; each uses one core)
#   LLMTUNE_FUZZ_TIMEOUT    seconds one input may take before it counts as a hang (default 60; the
#                           chat_template target renders under 1/500 of the template budgets, so
#                           a runaway template stops in well under a second even under ASan)
#   LLMTUNE_FUZZ_NO_BUILD=1 use the binaries as they are
#   LLMTUNE_FUZZ_STRICT=1   also stop at exceptions other than llmtune's errors (raw library messages)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"

TARGETS=(safetensors gguf dataset tokenizer chat_template config adapter_config)
usage() { echo "usage: scripts/fuzz.sh TARGET|all SECONDS [libFuzzer flags...]  (targets: ${TARGETS[*]})" >&2; exit 2; }
(($# >= 2)) || usage
which=$1
seconds=$2
shift 2
[[ "$seconds" =~ ^[0-9]+$ ]] || usage
if [[ "$which" == all ]]; then
  selected=("${TARGETS[@]}")
else
  [[ " ${TARGETS[*]} " == *" $which "* ]] || usage
  selected=("$which")
fi

sanitizers=${LLMTUNE_FUZZ_SANITIZERS:-address,undefined}
case "$sanitizers" in
  address,undefined) default_dir=build-asan ;;
  undefined) default_dir=build-fuzz-ubsan ;;
  *) die "LLMTUNE_FUZZ_SANITIZERS must be address,undefined or undefined, not '$sanitizers'" ;;
esac
build_dir=${LLMTUNE_ASAN_BUILD_DIR:-$LLMTUNE_ROOT/$default_dir}
export LLMTUNE_ASAN_BUILD_DIR=$build_dir
if [[ "${LLMTUNE_FUZZ_NO_BUILD:-0}" != 1 ]]; then
  LLMTUNE_SANITIZERS=$sanitizers LLMTUNE_ASAN_TARGETS="${selected[*]/#/fuzz_}" bash "$here/test-asan.sh" --build-only
fi

# Seeds derived from the fixtures (when a build made them) and shipped files, regenerated each run.
seeds_dir="$build_dir/fuzz-seeds"
rm -rf "$seeds_dir"
fixtures="$LLMTUNE_BUILD_DIR/fixtures"
[[ -d "$fixtures" ]] || log "no fixtures in $fixtures (a normal build makes them): fuzzing from the committed seeds"
"$(llmtune_python)" "$LLMTUNE_ROOT/tests/fuzz/make_seeds.py" fixtures "$fixtures" "$LLMTUNE_ROOT" "$seeds_dir"

# libtorch is not instrumented (see test-asan.sh). A UBSan report aborts, so libFuzzer keeps its input.
export ASAN_OPTIONS="detect_leaks=0:protect_shadow_gap=0:halt_on_error=1:abort_on_error=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
stats="$build_dir/fuzz-stats.tsv"

# fuzz_one TARGET: runs it for $seconds, prints its execution count, saves what it found.
fuzz_one() {
  local t=$1
  shift
  local bin="$build_dir/fuzz_$t" corpus="$build_dir/fuzz-corpus/$t" artifacts="$build_dir/fuzz-artifacts/$t"
  local log_file="$build_dir/fuzz-$t.log" regressions="$LLMTUNE_ROOT/tests/fuzz/regressions/$t"
  [[ -x "$bin" ]] || die "$bin is missing"
  mkdir -p "$corpus" "$artifacts"
  rm -f "$artifacts"/*
  local args=(-max_total_time="$seconds" -timeout="${LLMTUNE_FUZZ_TIMEOUT:-60}" -rss_limit_mb=4096
              -print_final_stats=1 -artifact_prefix="$artifacts/" -seed="${LLMTUNE_FUZZ_SEED:-0}")
  [[ -f "$LLMTUNE_ROOT/tests/fuzz/dicts/$t.dict" ]] && args+=(-dict="$LLMTUNE_ROOT/tests/fuzz/dicts/$t.dict")
  local dirs=("$corpus" "$LLMTUNE_ROOT/tests/fuzz/corpus/$t")
  [[ -d "$seeds_dir/$t" ]] && dirs+=("$seeds_dir/$t")
  [[ -d "$regressions" ]] && dirs+=("$regressions")
  local rc=0
  "$bin" "${args[@]}" "$@" "${dirs[@]}" >"$log_file" 2>&1 || rc=$?
  # Stopped by SIGINT/SIGTERM (libFuzzer exits 72 after its final stats): its executions count, no finding.
  local interrupted=0
  if ((rc == 72)) && grep -q 'libFuzzer: run interrupted' "$log_file"; then interrupted=1; rc=0; fi
  local execs
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_file" | tail -1)
  local found=0
  # crash-*, timeout-*, oom-*, leak-*: findings. slow-unit-* (an input over 10 s that finished) is not.
  rm -f "$artifacts"/slow-unit-*
  for f in "$artifacts"/*; do
    [[ -f "$f" ]] || continue
    mkdir -p "$regressions"
    local name
    name="$(basename "$f")"
    cp "$f" "$regressions/$name"
    log "$t: FOUND $name -> tests/fuzz/regressions/$t/$name: reproduce with $bin $regressions/$name;" \
        "fix it, give the file a descriptive name and commit it"
    found=1
  done
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$seconds" "${execs:-0}" "$( ((found || rc)) && echo FOUND || { ((interrupted)) && echo interrupted || echo ok; })" "$sanitizers" >>"$stats"
  if ((found || rc)); then
    grep -E 'ERROR|SUMMARY|runtime error|==[0-9]+==' "$log_file" | head -n 8 >&2 || true
    log "$t: FAILED after ${execs:-?} executions (exit $rc; log: $log_file)"
    return 1
  fi
  log "$t: ${execs:-0} executions in $( ((interrupted)) && echo "under ${seconds}s (interrupted)" || echo "${seconds}s"), corpus $(find "$corpus" -type f | wc -l) files, nothing found"
}

start=$(date +%s)
jobs_max=${LLMTUNE_FUZZ_JOBS:-1}
for t in "${selected[@]}"; do
  rm -f "$build_dir/fuzz-$t.failed"
  (fuzz_one "$t" "$@" || touch "$build_dir/fuzz-$t.failed") &
  while (($(jobs -rp | wc -l) >= jobs_max)); do sleep 1; done
done
wait
status=0
for t in "${selected[@]}"; do
  if [[ -f "$build_dir/fuzz-$t.failed" ]]; then status=1; fi
done
log "fuzzing (${selected[*]}) finished in $(( $(date +%s) - start ))s; totals per target in $stats"
exit $status
