#!/usr/bin/env bash
# install-deps.sh: install what snpd's demo and tests need on a Debian 12 (bookworm) host:
# QEMU >= 10 from bookworm-backports, OVMF, libvirt, a guest kernel, linters' prerequisites,
# what builds a unified kernel image (UKI) for the tests: Debian's systemd-stub
# (systemd-boot-efi: /usr/lib/systemd/boot/efi/linuxx64.efi.stub) and objcopy (binutils),
# and the rootfs of the systemd container the systemd tests boot (scripts/systemd-container.sh
# setup: debootstrap + QEMU, about 3 minutes and 290 MB once, in /var/cache/snpd-test).
# Idempotent: a second run installs nothing. Must run as root (or does nothing and says so).
#
# The bookworm-backports entry reuses the archive address already configured on this
# machine (the first Debian URI in /etc/apt/sources.list{,.d}); no address is hard-coded.
set -euo pipefail

need_pkgs=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

qemu_ok() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
  local v
  v=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
  [ -n "$v" ] && [ "$v" -ge 10 ]
}

# UKIs are built with objcopy, not ukify: systemd-ukify is in neither bookworm nor
# bookworm-backports (apt-cache policy systemd-ukify: no candidate), and bookworm's
# systemd-boot-efi (252) has no dependencies, so it installs beside any systemd (254
# arrives with bookworm-backports' libvirt).
for p in ovmf libvirt-daemon-system libvirt-clients cpio openssl mtools systemd-boot-efi binutils systemd-container debootstrap; do
  have "$p" || need_pkgs+=("$p")
done
bp_pkgs=()
qemu_ok || bp_pkgs+=(qemu-system-x86 qemu-utils)

# The guest kernel for the real-guest tests is unpacked (not installed) into KERNEL_DIR.
KERNEL_DIR=${SNPD_TEST_KERNEL_DIR:-/var/cache/snpd-test/kernel}
kernel_ok() { [ -s "$KERNEL_DIR/vmlinuz" ] && [ -d "$KERNEL_DIR/modules" ]; }

# The systemd container's rootfs (systemd/systemdtest.Container boots it).
CONTAINER_SCRIPT="$(dirname "$0")/systemd-container.sh"
container_ok() { bash "$CONTAINER_SCRIPT" check; }

if [ ${#need_pkgs[@]} -eq 0 ] && [ ${#bp_pkgs[@]} -eq 0 ] && kernel_ok && container_ok; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${need_pkgs[*]} ${bp_pkgs[*]}; run as root to install them" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if [ ${#bp_pkgs[@]} -gt 0 ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri=$( (grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'; \
          grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}') \
        | grep -v -- '-security' | grep -i 'debian' | awk 'NR==1') || true
  if [ -z "$uri" ]; then
    echo "install-deps: no Debian archive address found in apt's sources; cannot add bookworm-backports" >&2
    exit 1
  fi
  cat > /etc/apt/sources.list.d/snpd-bookworm-backports.sources <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
if [ ${#need_pkgs[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
if [ ${#bp_pkgs[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends -t bookworm-backports "${bp_pkgs[@]}" >/dev/null
fi
if ! kernel_ok; then
  # Debian's cloud kernel (virtio and vsock as modules, 8250 serial built in), unpacked only.
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  [ -n "$pkg" ] || { echo "install-deps: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null && dpkg-deb -x ./*.deb root)
  mkdir -p "$KERNEL_DIR"
  cp "$tmp"/root/boot/vmlinuz-* "$KERNEL_DIR/vmlinuz"
  rm -rf "$KERNEL_DIR/modules"
  mv "$tmp"/root/lib/modules/* "$KERNEL_DIR/modules"
  rm -rf "$tmp"
fi
qemu_ok || { echo "install-deps: qemu-system-x86_64 >= 10 still missing after install" >&2; exit 1; }
container_ok || bash "$CONTAINER_SCRIPT" setup
