#!/usr/bin/env bash
# lint.sh: gofmt, go vet and staticcheck over the whole module; fails on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt would change: $bad" >&2; exit 1; fi
go vet ./...
# staticcheck is pinned so a new release's checks cannot turn a green tree red overnight.
sc_version=v0.8.2
sc=$(go env GOPATH)/bin/staticcheck
if [ ! -x "$sc" ] || ! go version -m "$sc" | grep -q "honnef.co/go/tools[[:space:]]*$sc_version[[:space:]]"; then
  GOFLAGS= go install "honnef.co/go/tools/cmd/staticcheck@$sc_version"
fi
"$sc" ./...
echo "lint: gofmt, go vet, staticcheck clean"
