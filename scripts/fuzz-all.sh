#!/usr/bin/env bash
# fuzz-all.sh [DURATION]: run every Fuzz* target in the module for DURATION (default 5s).
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-5s}
n=0
while IFS= read -r f; do
  dir=$(dirname "$f")
  for name in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$f"); do
    echo "fuzz: ./$dir $name ($t)"
    # Go <= 1.26 can fail a run at the -fuzztime boundary with a bare "context deadline
    # exceeded" when the CPU is contended (golang/go#75804, fixed in Go 1.27): no input
    # failed, so that case alone is retried once; real findings fail at once.
    for try in 1 2; do
      go test -run='^$' -fuzz="^${name}\$" -fuzztime="$t" "./$dir" >/tmp/fuzz.$$.log 2>&1 && break
      if [ $try = 1 ] && grep -q 'context deadline exceeded' /tmp/fuzz.$$.log && ! grep -q 'Failing input written' /tmp/fuzz.$$.log; then
        echo "fuzz: $name hit the Go fuzz-deadline race (golang/go#75804); retrying once"
        continue
      fi
      cat /tmp/fuzz.$$.log; exit 1
    done
    n=$((n+1))
  done
done < <(grep -rl --include='*_test.go' '^func Fuzz' . | sort)
echo "fuzz: $n targets ran for $t each, no failures"
