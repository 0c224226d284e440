#!/usr/bin/env bash
# Run integration test files again and again; stop at the first failure.
#
#   scripts/repeat-tests.sh [-n RUNS] [-o DIR] TEST...     e.g. -n 200 clients forwarding
#
# The test executables are built once (`cargo test --no-run`) and copied to
# DIR, so rebuilding the tree meanwhile does not change what runs (tests that
# spawn `target/debug/portcullis` still use that binary). Every run's output
# goes to DIR/<test>-<run>.log; a passing run's log is deleted. DIR/summary
# gets one line per run and the final figures. Run it niced in the
# background on a shared machine:
#
#   nice scripts/repeat-tests.sh -n 200 clients > /tmp/repeat.out 2>&1 &
set -euo pipefail

runs=200
out=""
while getopts "n:o:" opt; do
    case "$opt" in
        n) runs="$OPTARG" ;;
        o) out="$OPTARG" ;;
        *) echo "usage: $0 [-n RUNS] [-o DIR] TEST..." >&2; exit 64 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: $0 [-n RUNS] [-o DIR] TEST..." >&2; exit 64; }
out="${out:-$(mktemp -d /tmp/portcullis-repeat.XXXXXX)}"
mkdir -p "$out/bin"
cd "$(dirname "$0")/.."

declare -A exe
for t in "$@"; do
    # The executable cargo reports for this test file.
    path=$(cargo test --no-run --test "$t" --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target") or {}
    if m.get("executable") and t.get("name") == sys.argv[1] and "test" in t.get("kind", []):
        print(m["executable"])' "$t")
    [ -x "$path" ] || { echo "no executable for test $t" >&2; exit 1; }
    cp "$path" "$out/bin/$t"
    exe[$t]="$out/bin/$t"
done

summary="$out/summary"
: > "$summary"
echo "output in $out" >&2
start=$(date +%s)
for ((i = 1; i <= runs; i++)); do
    for t in "$@"; do
        log="$out/$t-$i.log"
        t0=$(date +%s.%N)
        if "${exe[$t]}" > "$log" 2>&1; then
            rm -f "$log"
            printf '%s run %d ok %.1fs\n' "$t" "$i" "$(echo "$(date +%s.%N) - $t0" | bc)" >> "$summary"
        else
            code=$?
            printf '%s run %d FAILED (exit %d), log %s\n' "$t" "$i" "$code" "$log" >> "$summary"
            echo "FAILED: $t run $i (exit $code) after $(( $(date +%s) - start )) s; log $log" | tee -a "$summary" >&2
            exit 1
        fi
    done
done
echo "PASSED: $runs consecutive runs of each of: $* in $(( $(date +%s) - start )) s" | tee -a "$summary" >&2
