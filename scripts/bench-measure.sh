#!/usr/bin/env bash
# bench-measure.sh: speed and memory of `snpctl measure`, side by side in one run.
#
#   - 256 MiB image (random bytes prepended to Debian trixie's OVMF.fd, so no page is
#     uniform and none can take the uniform-page shortcut): wall time of `snpctl
#     measure` vs `openssl dgst -sha384` over the same file (target <= 0.6), and
#     snpctl's peak RSS (target < 64 MiB);
#   - the 4 MiB OVMF.fd: wall time of `snpctl measure` vs `openssl dgst -sha384` over
#     the same file (target <= 1.2), so both figures are ratios of one run.
#
# Runs are interleaved and the best of BENCH_RUNS (default 15) is kept for each
# command, so that load from other processes on the machine hurts neither side more.
# Besides human-readable lines it prints one line per figure:
#   BENCH <name> <value> <unit> <target>
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${BENCH_RUNS:-15}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# As make build ships it.
CGO_ENABLED=0 go build -trimpath -o "$tmp/snpctl" ./cmd/snpctl
fw=snp/testdata/firmware/ovmf-trixie-2025.02.fd
big=$tmp/big.fd
head -c $(( (256 << 20) - $(stat -c %s "$fw") )) /dev/urandom >"$big"
cat "$fw" >>"$big"
cat "$big" >/dev/null # page cache: both sides read from memory

# ns_of CMD...: wall time of one run in nanoseconds (output discarded). Bash's
# EPOCHREALTIME costs no fork, so nothing but CMD is inside the interval.
ns_of() {
  local t0 t1
  t0=${EPOCHREALTIME/[.,]/}
  "$@" >/dev/null
  t1=${EPOCHREALTIME/[.,]/}
  echo $(((t1 - t0) * 1000))
}
min() { sort -n | head -1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

measure_big=("$tmp/snpctl" measure --mode snp --vcpus 4 --vcpu-type EPYC-v4 --ovmf "$big")
measure_4m=("$tmp/snpctl" measure --mode snp --vcpus 4 --vcpu-type EPYC-v4 --ovmf "$fw")
: >"$tmp/snp" >"$tmp/ossl" >"$tmp/small" >"$tmp/ossl_small"
for _ in $(seq "$runs"); do
  ns_of "${measure_big[@]}" >>"$tmp/snp"
  ns_of openssl dgst -sha384 "$big" >>"$tmp/ossl"
  ns_of "${measure_4m[@]}" >>"$tmp/small"
  ns_of openssl dgst -sha384 "$fw" >>"$tmp/ossl_small"
done
snp_ns=$(min <"$tmp/snp")
ossl_ns=$(min <"$tmp/ossl")
small_ns=$(min <"$tmp/small")
ratio=$(awk -v a="$snp_ns" -v b="$ossl_ns" 'BEGIN {printf "%.2f", a / b}')
ratio_med=$(awk -v a="$(median <"$tmp/snp")" -v b="$(median <"$tmp/ossl")" 'BEGIN {printf "%.2f", a / b}')
small_ms=$(awk -v a="$small_ns" 'BEGIN {printf "%.1f", a / 1e6}')
ossl_small_ns=$(min <"$tmp/ossl_small")
ossl_small_ms=$(awk -v a="$ossl_small_ns" 'BEGIN {printf "%.1f", a / 1e6}')
small_ratio=$(awk -v a="$small_ns" -v b="$ossl_small_ns" 'BEGIN {printf "%.2f", a / b}')
small_ratio_med=$(awk -v a="$(median <"$tmp/small")" -v b="$(median <"$tmp/ossl_small")" 'BEGIN {printf "%.2f", a / b}')

# Peak RSS of snpctl on the 256 MiB image: GNU time when present, else VmHWM polled
# from /proc while it runs.
if [ -x /usr/bin/time ]; then
  rss_kb=$(/usr/bin/time -f %M "${measure_big[@]}" 2>&1 >/dev/null | tail -1)
else
  "${measure_big[@]}" >/dev/null &
  pid=$!
  rss_kb=0
  while kill -0 "$pid" 2>/dev/null; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$v" ] && [ "$v" -gt "$rss_kb" ] && rss_kb=$v
  done
  wait "$pid"
fi
rss_mib=$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f", k / 1024}')

echo "256 MiB image, best of $runs: snpctl measure $(awk -v a="$snp_ns" 'BEGIN {printf "%.0f", a / 1e6}') ms," \
  "openssl dgst -sha384 $(awk -v a="$ossl_ns" 'BEGIN {printf "%.0f", a / 1e6}') ms, ratio $ratio (median ratio $ratio_med)"
echo "256 MiB image: snpctl peak RSS $rss_mib MiB"
echo "4 MiB OVMF, best of $runs: snpctl measure $small_ms ms, openssl dgst -sha384 $ossl_small_ms ms, ratio $small_ratio (median ratio $small_ratio_med)"
echo "BENCH measure_256MiB_vs_openssl $ratio ratio <=0.6"
echo "BENCH measure_256MiB_peak_rss $rss_mib MiB <64"
echo "BENCH measure_4MiB_vs_openssl $small_ratio ratio <=1.2"
echo "BENCH measure_4MiB_ms $small_ms ms -"
