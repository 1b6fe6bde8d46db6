#!/usr/bin/env bash
# bench.sh [SCRIPT...]: `make bench`. Runs each benchmark script (default: the five
# below, those that exist), collects the figures they print, and prints one table with
# the machine it ran on. A script that is absent is listed as such; one that fails or
# prints a malformed BENCH line makes bench.sh exit 1 after the table.
#
#   scripts/bench-measure.sh   launch-digest computation vs `openssl dgst -sha384` of
#                              the same file (256 MiB random image, 4 MiB OVMF)
#   scripts/bench-launch.sh    snpd launch overhead vs bare QEMU
#   scripts/bench-verify.sh    report verification vs bare ECDSA P-384
#   scripts/bench-cli.sh       `snpctl vm list` as a whole process vs curl on the socket
#   scripts/bench-service.sh   API latency (p99 of `snpctl vm list`) while VMs start
#
# Line format (the contract with the scripts above). A benchmark script prints, on
# stdout, one line per figure:
#
#   BENCH <name> <value> <unit> <target>
#
#   name    [A-Za-z0-9_.:/-]+, unique, prefixed by its area: measure.vs_openssl,
#           launch.overhead_ratio, verify.vs_ecdsa, service.list_p99
#   value   a decimal number (digits, optional sign, fraction and exponent; no unit)
#   unit    one token: ms, us, ns, s, MiB/s, x (a ratio), %, ... ("-": none)
#   target  "-" when there is none, or a comparison with a number in the same unit:
#           <=N, <N, >=N, >N (e.g. "<=20" for a p99 in ms, ">=0.5" for a ratio)
#
# Ratios are measured side by side in one run of the script, never against figures
# from another machine. Everything else the scripts print (progress, raw numbers)
# goes to the per-script log and is not parsed. For scripts written before this
# contract, a line "RATIO <name> <value> <target>" is read as unit "x".
#
# Environment: BENCH_TIMEOUT (seconds per script, default 1800); BENCH_OUT (a file to
# which the machine description and every BENCH line are written, for CI); BENCH_STRICT=1
# (also exit 1 when a figure misses its target; by default a miss is shown, since
# targets are set for SEV-SNP hosts and this may be a laptop).
set -uo pipefail
cd "$(dirname "$0")/.."

timeout_s=${BENCH_TIMEOUT:-1800}
if [ $# -gt 0 ]; then
  scripts=("$@")
else
  scripts=(scripts/bench-measure.sh scripts/bench-launch.sh scripts/bench-verify.sh scripts/bench-cli.sh scripts/bench-service.sh)
fi

logdir=$(mktemp -d "${TMPDIR:-/tmp}/snpd-bench.XXXXXX")
results="$logdir/results"   # script<TAB>name<TAB>value<TAB>unit<TAB>target
: >"$results"
failed=0
status_lines=()

# valid_bench checks one BENCH line's fields; prints a reason when malformed.
valid_bench() {
  local name=$1 value=$2 unit=$3 target=$4
  [[ $name =~ ^[A-Za-z0-9_.:/-]+$ ]] || { echo "bad name '$name'"; return 1; }
  [[ $value =~ ^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]] || { echo "bad value '$value'"; return 1; }
  [[ $unit =~ ^[^[:space:]]+$ ]] || { echo "bad unit '$unit'"; return 1; }
  [[ $target == - || $target =~ ^(\<=|\>=|\<|\>)[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]] ||
    { echo "bad target '$target'"; return 1; }
}

for s in "${scripts[@]}"; do
  base=$(basename "$s" .sh)
  if [ ! -f "$s" ]; then
    status_lines+=("$(printf '%-22s %s' "$base" "absent (not written yet), skipped")")
    continue
  fi
  log="$logdir/$base.log"
  echo "bench: running $s (log $log)" >&2
  start=$(date +%s)
  timeout --kill-after=30 "$timeout_s" bash "$s" >"$log.out" 2>"$log"
  rc=$?
  secs=$(( $(date +%s) - start ))
  n=0 bad=0
  while read -r kw a b c d extra; do
    why=""
    case "$kw" in
      BENCH) name=$a value=$b unit=$c target=$d ;;
      RATIO) name=$a value=$b unit=x target=${c:--} ;;
      *) continue ;;
    esac
    if [ "$kw" = RATIO ] && [ -n "$d" ]; then extra="$d $extra"; fi
    if [ -n "${extra:-}" ] || ! why=$(valid_bench "$name" "$value" "$unit" "$target"); then
      echo "bench: $s: malformed line: $kw $a $b $c $d $extra (${why:-extra fields})" >&2
      bad=$((bad+1))
      continue
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$base" "$name" "$value" "$unit" "$target" >>"$results"
    n=$((n+1))
  done <"$log.out"
  cat "$log.out" >>"$log"
  if [ $rc -ne 0 ]; then
    why="exit status $rc"; [ $rc -eq 124 ] && why="timed out after ${timeout_s}s"
    status_lines+=("$(printf '%-22s FAILED (%s) after %ss, %d figures; last lines of %s:' "$base" "$why" "$secs" "$n" "$log")")
    while IFS= read -r l; do status_lines+=("    $l"); done < <(tail -n 5 "$log")
    failed=1
  elif [ $bad -gt 0 ]; then
    status_lines+=("$(printf '%-22s FAILED: %d malformed BENCH lines (see above), %d figures' "$base" "$bad" "$n")")
    failed=1
  elif [ $n -eq 0 ]; then
    status_lines+=("$(printf '%-22s FAILED: ran %ss but printed no BENCH line' "$base" "$secs")")
    failed=1
  else
    status_lines+=("$(printf '%-22s ok, %d figures in %ss' "$base" "$n" "$secs")")
  fi
done

# The machine, so figures can be judged.
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
[ -n "$cpu" ] || cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n1)
mem=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
qemu=$( (qemu-system-x86_64 --version 2>/dev/null || echo "not installed") | head -n1 | sed 's/^QEMU emulator version //')
gov=$(go version 2>/dev/null | awk '{print $3}')
sev=$([ -e /dev/sev ] && echo present || echo absent)
kvm=$([ -e /dev/kvm ] && echo present || echo absent)
virt=$(systemd-detect-virt 2>/dev/null || true)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
machine=(
  "date|$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  "commit|$commit"
  "cpu|${cpu:-unknown}"
  "nproc|$(nproc)"
  "memory|$mem"
  "kernel|$(uname -r)"
  "qemu|$qemu"
  "go|${gov:-unknown}"
  "devices|/dev/kvm $kvm, /dev/sev $sev${virt:+, virtualization: $virt}"
)

echo
echo "snpd benchmarks"
for m in "${machine[@]}"; do printf '  %-8s %s\n' "${m%%|*}" "${m#*|}"; done
echo
missed=0
if [ -s "$results" ]; then
  awk -F '\t' '
    function meets(v, t,   op, n) {
      if (t == "-") return "-"
      op = t; sub(/[-+0-9.eE]+$/, "", op); n = substr(t, length(op) + 1) + 0; v += 0
      if (op == "<=") return v <= n ? "ok" : "MISSED"
      if (op == ">=") return v >= n ? "ok" : "MISSED"
      if (op == "<")  return v <  n ? "ok" : "MISSED"
      if (op == ">")  return v >  n ? "ok" : "MISSED"
      return "?"
    }
    BEGIN { printf "  %-40s %12s %-7s %-9s %-7s %s\n", "figure", "value", "unit", "target", "result", "script"
            printf "  %-40s %12s %-7s %-9s %-7s %s\n", "------", "-----", "----", "------", "------", "------" }
    { r = meets($3, $5); if (r == "MISSED") missed++
      printf "  %-40s %12s %-7s %-9s %-7s %s\n", $2, $3, $4, $5, r, $1 }
    END { exit missed > 0 }' "$results" || missed=1
else
  echo "  (no figures)"
fi
echo
for l in "${status_lines[@]}"; do echo "  $l"; done
echo "  logs: $logdir"

if [ -n "${BENCH_OUT:-}" ]; then
  {
    for m in "${machine[@]}"; do printf 'MACHINE %s %s\n' "${m%%|*}" "${m#*|}"; done
    awk -F '\t' '{ printf "BENCH %s %s %s %s %s\n", $2, $3, $4, $5, $1 }' "$results"
  } >"$BENCH_OUT"
fi

if [ $failed -ne 0 ]; then
  echo "bench: a benchmark script failed (see above)" >&2
  exit 1
fi
if [ $missed -ne 0 ] && [ "${BENCH_STRICT:-0}" = 1 ]; then
  echo "bench: a figure missed its target (BENCH_STRICT=1)" >&2
  exit 1
fi
exit 0
