#!/usr/bin/env bash
# bench-launch.sh: start -> running through snpd's launch path (Launcher.Launch: seal,
# measure, start paused, QMP verification, cont) vs starting the same QEMU argv directly
# and sending cont over QMP, side by side in one run (BenchmarkLaunchOverhead in
# daemon/launch, medians over BENCH_LAUNCH_N launches each, default 20). Prints the raw
# benchmark line, then BENCH lines (see scripts/bench.sh): the overhead minus the
# firmware measurement time has a 30 ms target.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${BENCH_LAUNCH_N:-20}
out=$(go test -count=1 -run '^$' -bench '^BenchmarkLaunchOverhead$' -benchtime "${n}x" ./daemon/launch/ 2>&1) || {
  echo "$out" >&2
  exit 1
}
line=$(echo "$out" | grep '^BenchmarkLaunchOverhead') || { echo "$out" >&2; echo "bench-launch: no benchmark result (skipped? see above)" >&2; exit 1; }
echo "$line"
echo "$out" | grep -m1 'accelerator' | sed 's/^ *//' || true
metric() { echo "$line" | awk -v u="$1" '{for (i = 2; i <= NF; i++) if ($i == u) print $(i-1)}'; }
launch=$(metric launch-ms); direct=$(metric direct-ms); measure=$(metric measure-ms)
over=$(metric overhead-ms); cached=$(metric cached-ms)
echo "medians of ${n}: launch path ${launch} ms (cold caches), the same launch with warm seal/digest caches ${cached} ms, direct qemu+cont ${direct} ms, firmware measurement ${measure} ms"
echo "median over pairs of (launch - direct - measurement): ${over} ms (target <= 30 ms)"
echo "load average after the run: $(cut -d' ' -f1 /proc/loadavg) (other processes add noise)"
echo "BENCH launch.overhead_minus_measure ${over} ms <=30"
echo "BENCH launch.start_to_running ${launch} ms -"
echo "BENCH launch.direct_qemu_cont ${direct} ms -"
echo "BENCH launch.firmware_measure ${measure} ms -"
echo "BENCH launch.start_to_running_cached ${cached} ms -"
