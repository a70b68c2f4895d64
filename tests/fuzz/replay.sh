#!/usr/bin/env bash
# Replays every file under the given directories (missing ones are empty) with a libFuzzer binary:
# given files rather than directories, libFuzzer runs each once and does not fuzz.
#   replay.sh FUZZ_BINARY DIR...
set -euo pipefail
bin=$1
shift
files=()
for d in "$@"; do
  [[ -d "$d" ]] || continue
  while IFS= read -r -d '' f; do files+=("$f"); done < <(find "$d" -type f ! -name '.*' -print0 | sort -z)
done
((${#files[@]} == 0)) && { echo "replay: no inputs"; exit 0; }
exec "$bin" -runs=1 "${files[@]}"
