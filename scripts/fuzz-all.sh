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
    go test -run='^$' -fuzz="^${name}\$" -fuzztime="$t" "./$dir" >/tmp/fuzz.$$.log 2>&1 || { cat /tmp/fuzz.$$.log; exit 1; }
    n=$((n+1))
  done
done < <(grep -rl --include='*_test.go' '^func Fuzz' . | sort)
echo "fuzz: $n targets ran for $t each, no failures"
