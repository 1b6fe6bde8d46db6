#!/usr/bin/env bash
# bench-service.sh: start 20 small VMs (64 MiB, platform "none", real QEMU, TCG where
# there is no KVM) concurrently through snpd while listing VMs in a loop; print the list
# latency percentiles over the API and through `snpctl vm list` (a process per call),
# and BENCH lines for bench.sh (daemon.BenchmarkStart20WhileListing).
#
# The scenario runs in three CPU cgroup layouts side by side (each 8 rounds, taken in
# turns, samples pooled; SNPD_BENCH_ROUNDS changes that), all under a real systemd: the
# test container of docs/systemd-container.md (systemd-nspawn, Debian's systemd as
# PID 1 with systemd-machined; needs root and the rootfs scripts/install-deps.sh builds,
# else the benchmark is skipped saying why). snpd runs as a transient service; the
# driver and every snpctl in a scope in user.slice, as an operator's session:
#   flat      snpd and its QEMUs in one CPU cgroup (a service at the default weight that
#             sees no systemd, so snpd places no guest): a host without systemd or a
#             delegated cgroup;
#   deployed  snpd's service with snpd.service's CPUWeight= (200), each guest in a scope
#             of its own in machine.slice with its cpu_weight, placed by snpd through
#             systemd-machined: the layout snpd.service gives;
#   metrics   deployed with [metrics] on a unix socket with per_vm, /metrics scraped every
#             second; its API list p99 over deployed's is what metrics cost.
# It prints where each process ran (checked every round from /proc/PID/cgroup and the
# cgroups' weights), the ratios flat / deployed, snpd's CPU and run-queue wait during the
# starts (schedstat), what placing the guests cost systemd (PID 1, systemd-machined and
# dbus-daemon CPU time), and snpctl's idle start-up: static (as shipped) and with cgo.
# SNPD_BENCH_ONLY=flat,deployed runs only those layouts; SNPD_BENCH_THINK=20ms pauses
# after each snpctl call and SNPD_BENCH_NOAPI=1 drops the API sampler; SNPD_BENCH_DEBUG=1
# prints every call over 20 ms. The figures depend on the host's load: the script prints
# the load average with them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
chmod 755 "$bin"
# snpctl as `make build` ships it: static, no cgo; and a cgo build for comparison (it
# loads libc through ld.so at every start).
CGO_ENABLED=0 go build -trimpath -o "$bin/snpctl" ./cmd/snpctl
CGO_ENABLED=1 go build -o "$bin/snpctl-cgo" ./cmd/snpctl
SNPCTL="$bin/snpctl" SNPCTL_CGO="$bin/snpctl-cgo" go test -count=1 -timeout 28m -run '^$' \
  -bench '^BenchmarkStart20WhileListing$' -benchtime 1x ./daemon/ \
  | grep -E '^(BENCH |== |cgroups|host load|ratios|[0-9]+ rounds of 20|API list|snpctl vm list|GET /metrics|round [0-9]+ of|snpd while|systemd while|--- (FAIL|SKIP)|FAIL|[[:space:]]+[A-Za-z0-9_]+_test\.go:[0-9]+:)'
