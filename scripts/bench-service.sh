#!/usr/bin/env bash
# bench-service.sh: start 20 small VMs (64 MiB, platform "none", real QEMU) concurrently
# through snpd while listing VMs in a loop; print the list latency percentiles over the
# API and through `snpctl vm list` (a process per call), and BENCH lines for bench.sh.
# Runs the scenario in five variants side by side (each 5 rounds, taken in turns, samples pooled;
# SNPD_BENCH_ROUNDS changes that) and prints the ratios: the flat layout (snpd
# and its QEMUs in the bench's own cgroup, each QEMU in its own autogroup) with QEMU at
# snpd's priority (qemu_nice = 0) and at the default qemu_nice, the same with metrics enabled ([metrics]
# on a unix socket with per_vm, /metrics scraped every second; the ratio of its API list
# p99 to the default's is the cost of metrics), and the deployed layout
# (default qemu_nice; snpd and its QEMUs in a fresh CPU cgroup standing in for
# snpd.service, snpctl outside it, as under systemd; cgroup v1 or v2, needs root). It
# prints where each process ran (/proc/PID/cgroup); if no cgroup can be made it says why
# and prints no *_deployed figure. Also snpd's CPU and run-queue wait during the starts
# (schedstat) and snpctl's idle start-up: static (as shipped) and with cgo.
# SNPD_BENCH_THINK=20ms pauses after each snpctl call and SNPD_BENCH_NOAPI=1 drops the API
# sampler (spaced-out calls; see the benchmark's doc comment); SNPD_BENCH_DEBUG=1 prints
# every call over 20 ms with how far into the round it started. SNPD_BENCH_NICE=5,19 adds
# flat variants, SNPD_BENCH_DEPLOYED_NICE=0,19 deployed ones. The figures depend on the
# host's load: the script prints the load average with them.
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
  | grep -E '^(BENCH |== |not measured|cgroups|host load|ratios|[0-9]+ rounds of 20|API list|snpctl vm list|GET /metrics|round [0-9]+ of|snpd while|--- FAIL|FAIL|[[:space:]]+[A-Za-z0-9_]+_test\.go:[0-9]+:)'
