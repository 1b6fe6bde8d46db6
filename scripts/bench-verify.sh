#!/usr/bin/env bash
# bench-verify.sh: attestation report verification throughput, side by side in one run.
#
#   snpd's full verification of a report from a chip whose chain it has verified before
#   (snp.Verifier: decode, certificate table, cached chain, ECDSA P-384 signature, every
#   launch-record check, go-sev-guest validate) vs bare crypto/ecdsa P-384 verification
#   (SHA-384 + ecdsa.VerifyASN1 with a parsed key) of the same reports.
#   Target: at most 1.3x the bare cost per report.
#
# BenchmarkVerifyVsECDSA (snp/verify_bench_test.go) alternates the two sides report by
# report, so load from other processes falls on both equally; it is run BENCH_RUNS times
# (default 5) and the median ratio is kept.
# Besides human-readable lines it prints one line per figure:
#   BENCH <name> <value> <unit> <target>
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${BENCH_RUNS:-5}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/snp.test" ./snp
"$tmp/snp.test" -test.run '^$' -test.bench '^BenchmarkVerifyVsECDSA$' \
  -test.benchtime 2s -test.count "$runs" | tee "$tmp/out"
# Fields: name iters ns/op  bare bare-ns/report  full full-ns/report  ratio x
awk '/^BenchmarkVerifyVsECDSA/ {for (i = 1; i < NF; i++) {
       if ($(i+1) == "x") r = $i; if ($(i+1) == "full-ns/report") f = $i; if ($(i+1) == "bare-ns/report") b = $i }
     print r, f, b}' "$tmp/out" | sort -n >"$tmp/rows"
n=$(wc -l <"$tmp/rows")
[ "$n" -gt 0 ] || { echo "bench-verify: no benchmark output" >&2; exit 1; }
read -r ratio full bare < <(sed -n "$(( (n + 1) / 2 ))p" "$tmp/rows")
echo "verify: median of $n runs: full ${full} ns/report ($(awk -v a="$full" 'BEGIN {printf "%.0f", 1e9 / a}') reports/s), bare ECDSA P-384 ${bare} ns/report, ratio ${ratio}"
echo "BENCH verify.vs_ecdsa ${ratio} x <=1.3"
echo "BENCH verify.full_us $(awk -v a="$full" 'BEGIN {printf "%.1f", a / 1000}') us -"
