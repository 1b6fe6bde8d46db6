#!/usr/bin/env bash
# bench-cli.sh: what `snpctl vm list` costs an operator, as a whole process, against a
# plain HTTP client making the same request, `curl --unix-socket SOCK http://x/v1/vms`,
# both against one real snpd (platform "none", a throw-away config, state and runtime
# directory, BENCH_CLI_VMS defined and stopped VMs, default 5).
#
# The two commands alternate call by call (which goes first alternates too),
# BENCH_CLI_RUNS (default 200) each after 10 unrecorded warm-up calls, so load from
# other processes on the machine falls on both alike. Prints the median and p90 of each,
# in ms, and their ratios: the median ratio is the figure with a target (<= 1.5).
#
# Besides human-readable lines it prints one line per figure for bench.sh:
#   BENCH <name> <value> <unit> <target>
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${BENCH_CLI_RUNS:-200}
nvms=${BENCH_CLI_VMS:-5}
command -v curl >/dev/null || { echo "bench-cli: curl is not installed (apt-get install curl)" >&2; exit 1; }

tmp=$(mktemp -d)
snpd_pid=
cleanup() {
  if [ -n "$snpd_pid" ]; then kill "$snpd_pid" 2>/dev/null; wait "$snpd_pid" 2>/dev/null; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
# Built as make build ships them.
CGO_ENABLED=0 go build -trimpath -o "$tmp/" ./cmd/snpd ./cmd/snpctl

mkdir -p "$tmp/state" "$tmp/run"
sed -e 's/^platform = .*/platform = "none"/' \
    -e "s|^policy_file = \"policy.toml\"|policy_file = \"$PWD/config/examples/policy.toml\"|" \
    config/examples/snpd.toml >"$tmp/snpd.toml"
sock=$tmp/run/snpd.sock
"$tmp/snpd" --config "$tmp/snpd.toml" --state-dir "$tmp/state" --runtime-dir "$tmp/run" >"$tmp/snpd.log" 2>&1 &
snpd_pid=$!
for i in $(seq 101); do
  curl -sf --unix-socket "$sock" http://x/v1/vms >/dev/null 2>&1 && break
  kill -0 "$snpd_pid" 2>/dev/null || { echo "bench-cli: snpd exited:" >&2; cat "$tmp/snpd.log" >&2; exit 1; }
  [ "$i" -le 100 ] || { echo "bench-cli: snpd did not answer on $sock within 10 s" >&2; exit 1; }
  sleep 0.1
done
for i in $(seq "$nvms"); do
  sed "s/^name = .*/name = \"bench$i\"/" config/examples/vm.toml >"$tmp/vm$i.toml"
  "$tmp/snpctl" --socket "$sock" vm define "$tmp/vm$i.toml" >/dev/null
done
# Both must succeed and see the same VMs before anything is timed.
got=$("$tmp/snpctl" --socket "$sock" vm list | grep -c '^bench' || true)
[ "$got" = "$nvms" ] || { echo "bench-cli: snpctl vm list shows $got of $nvms VMs" >&2; exit 1; }
got=$(curl -sf --unix-socket "$sock" http://x/v1/vms | grep -o '"bench[0-9]*"' | sort -u | wc -l)
[ "$got" = "$nvms" ] || { echo "bench-cli: curl /v1/vms shows $got of $nvms VMs" >&2; exit 1; }

snpctl=("$tmp/snpctl" --socket "$sock" vm list)
curl=(curl -sf --unix-socket "$sock" http://x/v1/vms)
# ns_of CMD...: wall time of one run in nanoseconds (output discarded). Bash's
# EPOCHREALTIME costs no fork, so nothing but CMD is inside the interval.
ns_of() {
  local t0 t1
  t0=${EPOCHREALTIME/[.,]/}
  "$@" >/dev/null
  t1=${EPOCHREALTIME/[.,]/}
  echo $(((t1 - t0) * 1000))
}
for _ in $(seq 10); do "${snpctl[@]}" >/dev/null; "${curl[@]}" >/dev/null; done
: >"$tmp/snpctl.ns" >"$tmp/curl.ns"
for i in $(seq "$runs"); do
  if [ $((i % 2)) = 0 ]; then
    ns_of "${snpctl[@]}" >>"$tmp/snpctl.ns"
    ns_of "${curl[@]}" >>"$tmp/curl.ns"
  else
    ns_of "${curl[@]}" >>"$tmp/curl.ns"
    ns_of "${snpctl[@]}" >>"$tmp/snpctl.ns"
  fi
done

# pct P <FILE: the P-th percentile (nearest rank) in ms.
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((NR*p+99)/100); if (i<1) i=1; printf "%.2f", a[i]/1e6}'; }
s50=$(pct 50 <"$tmp/snpctl.ns") s90=$(pct 90 <"$tmp/snpctl.ns")
c50=$(pct 50 <"$tmp/curl.ns") c90=$(pct 90 <"$tmp/curl.ns")
r50=$(awk -v a="$s50" -v b="$c50" 'BEGIN {printf "%.2f", a / b}')
r90=$(awk -v a="$s90" -v b="$c90" 'BEGIN {printf "%.2f", a / b}')
load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "$runs interleaved calls each, $nvms VMs, load average $load:"
echo "  snpctl vm list:            median $s50 ms, p90 $s90 ms"
echo "  curl --unix-socket /v1/vms: median $c50 ms, p90 $c90 ms"
echo "  ratio snpctl / curl:       median ${r50}x, p90 ${r90}x"
echo "BENCH cli_vm_list_vs_curl_median $r50 x <=1.5"
echo "BENCH cli_vm_list_vs_curl_p90 $r90 x -"
echo "BENCH cli_vm_list_median $s50 ms -"
echo "BENCH cli_curl_list_median $c50 ms -"
