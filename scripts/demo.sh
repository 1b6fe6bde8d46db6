#!/usr/bin/env bash
# demo.sh: the whole snpd story on this host, with a throw-away state directory.
# Run by `make demo` after deps and build. Starts snpd, defines and starts the example VM,
# shows its expected measurement, launch record, policy check and reference values, then
# stops everything and removes what it made.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
work=$(mktemp -d /tmp/snpd-demo.XXXXXX)
snpd_pid=
cleanup() {
  set +e
  if [ -n "$snpd_pid" ] && kill -0 "$snpd_pid" 2>/dev/null; then
    "$BIN/snpctl" vm kill example >/dev/null 2>&1
    kill "$snpd_pid"; wait "$snpd_pid" 2>/dev/null
  fi
  # Nothing of the demo may outlive it: any QEMU still holding the demo's runtime dir goes.
  pkill -f -- "$work/run/vms/" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

platform=none
if [ -c /dev/sev ]; then platform=sev-snp; fi
step "Platform: $platform"
if [ "$platform" = none ]; then
  cat <<'MSG'
  *********************************************************************************
  * This host has no /dev/sev: the demo runs on platform "none". The guest is a    *
  * plain KVM/TCG VM with the same pinned argv; it is NOT confidential. The launch *
  * digest below is what an SEV-SNP host would measure for the same definition.    *
  *********************************************************************************
MSG
fi

# The example config, with the platform chosen above (paths in it are resolved against
# its own directory, so the copy points back at config/examples/).
mkdir -p "$work/state" "$work/run"
sed -e "s/^platform = .*/platform = \"$platform\"/" \
    -e "s|^policy_file = \"policy.toml\"|policy_file = \"$PWD/config/examples/policy.toml\"|" \
    config/examples/snpd.toml > "$work/snpd.toml"
export SNPD_SOCKET="$work/run/snpd.sock"

step "Start snpd (state and runtime in $work)"
"$BIN/snpd" --config "$work/snpd.toml" --state-dir "$work/state" --runtime-dir "$work/run" \
  >"$work/snpd.log" 2>&1 &
snpd_pid=$!
for _ in $(seq 50); do
  "$BIN/snpctl" status >/dev/null 2>&1 && break
  kill -0 "$snpd_pid" 2>/dev/null || { cat "$work/snpd.log"; exit 1; }
  sleep 0.1
done
run "$BIN/snpctl" status

step "Check the example VM against the host policy (no daemon needed)"
run "$BIN/snpctl" policy check --policy config/examples/policy.toml config/examples/vm.toml

step "The same check refuses a debug policy, naming every broken rule"
sed -e 's/^policy = 0x30000/policy = 0xB0000/' -e 's/^vcpus = 1/vcpus = 128/' \
  config/examples/vm.toml > "$work/vm-debug.toml"
printf '$ %s\n' "snpctl policy check ... vm-debug.toml   (debug bit set, 128 vCPUs)"
if "$BIN/snpctl" policy check --policy config/examples/policy.toml "$work/vm-debug.toml"; then
  echo "demo: a debug policy was accepted" >&2; exit 1
fi

step "Expected launch digest, computed offline (drop-in for sev-snp-measure)"
run "$BIN/snpctl" measure --mode snp --vcpus 1 --vcpu-type EPYC-v4 --ovmf /usr/share/ovmf/OVMF.fd

step "Define and start the VM: sealed firmware, pinned argv, QMP check before cont"
run "$BIN/snpctl" vm define config/examples/vm.toml
run "$BIN/snpctl" vm start example

step "The launch record (what verifiers are served)"
run "$BIN/snpctl" vm show example
run "$BIN/snpctl" vm list

if "$BIN/snpctl" reference --help >/dev/null 2>&1; then
  step "Reference values for verifiers"
  printf '$ %s\n' "snpctl reference example --format json   (AMD CA certificates elided here)"
  "$BIN/snpctl" reference example --format json | sed 's/"-----BEGIN CERTIFICATE-----.*/"<PEM: AMD intermediate + ARK>",/'
  printf '$ %s\n' "snpctl reference example --format trustee   (payload decoded)"
  "$BIN/snpctl" reference example --format trustee | sed -n 's/.*"payload": "\(.*\)".*/\1/p' | base64 -d
  echo
fi

step "Stop the VM (ACPI power-off, then quit) and snpd"
run "$BIN/snpctl" vm stop --timeout 3s example
run "$BIN/snpctl" vm list
kill "$snpd_pid"; wait "$snpd_pid" || true
snpd_pid=
step "Done: everything the demo made is removed"
