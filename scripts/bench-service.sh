#!/usr/bin/env bash
# bench-service.sh: start 20 small VMs (64 MiB, platform "none", real QEMU) concurrently
# through snpd while listing VMs in a loop; print the list latency percentiles over the
# API and through `snpctl vm list` (a process per call), and BENCH lines for bench.sh.
# Runs the scenario twice side by side, QEMU at snpd's priority (qemu_nice = 0) and at the
# default qemu_nice, and prints the ratios; also snpctl's idle start-up, static vs cgo.
# SNPD_BENCH_NICE=5,19 adds variants. The figures depend on the host's load: the script
# prints the load average with them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
chmod 755 "$bin"
# Built as `make build` ships it: static, no cgo (a cgo build loads libc through ld.so and
# costs ~1.4 ms more CPU per call).
CGO_ENABLED=0 go build -trimpath -o "$bin/snpctl" ./cmd/snpctl
CGO_ENABLED=1 go build -o "$bin/snpctl-cgo" ./cmd/snpctl
SNPCTL="$bin/snpctl" SNPCTL_CGO="$bin/snpctl-cgo" go test -count=1 -run '^$' -bench '^BenchmarkStart20WhileListing$' -benchtime 1x ./daemon/ \
  | grep -E '^(BENCH |== |host load|ratios|20 concurrent|API list|snpctl vm list)'
