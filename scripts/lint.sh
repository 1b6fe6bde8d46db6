#!/usr/bin/env bash
# lint.sh: gofmt, go vet and staticcheck over the whole module; fails on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt would change: $bad" >&2; exit 1; fi
go vet ./...
sc=$(go env GOPATH)/bin/staticcheck
if [ ! -x "$sc" ]; then
  GOFLAGS= go install honnef.co/go/tools/cmd/staticcheck@latest
fi
"$sc" ./...
echo "lint: gofmt, go vet, staticcheck clean"
