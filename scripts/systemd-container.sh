#!/usr/bin/env bash
# systemd-container.sh: a real systemd (PID 1, with D-Bus and systemd-machined) in a
# systemd-nspawn container, for tests on hosts whose init is not systemd.
#
#   systemd-container.sh setup               build the cached rootfs (idempotent; ~3 min once)
#   systemd-container.sh check               exit 0 when the rootfs is built and current
#   systemd-container.sh boot NAME [ARGS]    start container NAME in the background, wait
#                                            until its systemd is up, print its PID 1's host pid
#   systemd-container.sh run NAME [ARGS]     the same in the foreground: exec systemd-nspawn
#                                            (for a supervisor that owns its lifetime)
#   systemd-container.sh wait NAME [SECS]    wait until systemd in NAME is running (default 60 s)
#   systemd-container.sh exec NAME CMD...    run CMD inside NAME, in a transient scope of its
#                                            systemd, with this process's stdio and exit status
#   systemd-container.sh leader NAME         print the host pid of NAME's PID 1
#   systemd-container.sh stop NAME           halt NAME (SIGTERM -> clean systemd shutdown),
#                                            remove its cgroups and state
#   systemd-container.sh prune               remove state and cgroups of containers that died
#
# ARGS are extra systemd-nspawn options (for instance --bind-ro=/srv). Always bound: the
# repository (read-only), GOROOT and the Go module cache (read-only) when present, and a
# scratch directory /var/tmp/snpd-nspawn/NAME (read-write); each at the same path inside
# as outside, so a test binary built on the host runs inside unchanged.
#
# The rootfs (/var/cache/snpd-test/systemd-rootfs, or $SNPD_SYSTEMD_ROOTFS) is Debian
# bookworm made by debootstrap from the archive apt already uses (the first Debian URI in
# apt's sources: no address is written here), with systemd, dbus, systemd-container
# (machined, machinectl), OVMF and QEMU >= 10 from bookworm-backports. Containers boot it
# with --volatile=overlay: every boot starts from the same tree, writes go to a tmpfs, and
# several containers may run at once.
#
# How it works without systemd on the host (see docs/systemd-container.md for the why):
#   - --register=no --keep-unit: there is no host systemd/machined to register with or to
#     allocate a scope from; nspawn makes its own payload/supervisor sub-cgroups.
#   - Before exec'ing systemd-nspawn, `run` moves itself into a new sub-cgroup
#     snpd-nspawn-NAME of its current cgroup in every hierarchy (v1 controllers,
#     name=systemd, the v2 one), so the container's cgroup namespace is rooted there and
#     everything it creates is removed by `stop`.
#   - nspawn mounts the cgroup v1 controller hierarchies read-only in a container without
#     a user namespace. PID 1 is a shim that remounts them read-write, then execs systemd:
#     the container's systemd then applies CPUWeight=, MemoryMax=, TasksMax= to its units'
#     cgroups (cpu.shares, memory.limit_in_bytes, pids.max on v1), inside its subtree.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOTFS=${SNPD_SYSTEMD_ROOTFS:-/var/cache/snpd-test/systemd-rootfs}
STATE=/run/snpd-nspawn
SCRATCH=/var/tmp/snpd-nspawn
# Bump when the recipe below changes: setup rebuilds a rootfs with another stamp.
RECIPE=1

die() { echo "systemd-container: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }

valid_name() {
  [[ $1 =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]] || die "bad container name '$1' (lower-case letters, digits, -)"
}

archive_uri() {
  (grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
   grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}') \
    | grep -v -- '-security' | grep -i 'debian' | awk 'NR==1'
}

rootfs_ok() { [ "$(cat "$ROOTFS/.snpd-recipe" 2>/dev/null)" = "$RECIPE" ]; }

cmd_setup() {
  need_root
  rootfs_ok && return 0
  command -v systemd-nspawn >/dev/null || die "systemd-nspawn missing (Debian package systemd-container)"
  command -v debootstrap >/dev/null || die "debootstrap missing (Debian package debootstrap)"
  local uri tmp t0
  uri=$(archive_uri) || true
  [ -n "$uri" ] || die "no Debian archive address in apt's sources"
  t0=$(date +%s)
  tmp=$ROOTFS.new
  rm -rf "$tmp"
  mkdir -p "$(dirname "$ROOTFS")"
  echo "systemd-container: debootstrap bookworm into $ROOTFS (a few minutes, once)" >&2
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,systemd-container,ovmf \
    bookworm "$tmp" "$uri" >"$tmp.log" 2>&1 || { tail -20 "$tmp.log" >&2; die "debootstrap failed (log: $tmp.log)"; }
  cat >"$tmp/etc/apt/sources.list.d/bookworm-backports.sources" <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  rm -f "$tmp/etc/hostname" # the hostname is the container name nspawn sets
  : >"$tmp/etc/machine-id" # empty: systemd makes a new one per boot
  # Nothing a test does not need: no login prompt on the console, no periodic jobs.
  local u
  for u in console-getty.service getty@.service apt-daily.timer apt-daily-upgrade.timer \
           dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
           systemd-tmpfiles-clean.timer; do
    ln -sf /dev/null "$tmp/etc/systemd/system/$u"
  done
  # QEMU >= 10 from bookworm-backports, installed by the rootfs's own apt in a plain
  # (non-booted) nspawn, so package scripts run in the rootfs.
  local setup=snpd-setup-$$
  mkdir -p "$STATE/$setup"
  (enter_cgroups "$setup"
   exec systemd-nspawn -q -D "$tmp" --register=no --keep-unit --machine="$setup" \
    /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq &&
      apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null &&
      apt-get clean && rm -rf /var/lib/apt/lists/*') >>"$tmp.log" 2>&1 \
    || { cleanup "$setup"; tail -20 "$tmp.log" >&2; die "installing QEMU in the rootfs failed (log: $tmp.log)"; }
  cleanup "$setup"
  echo "$RECIPE" >"$tmp/.snpd-recipe"
  rm -rf "$ROOTFS"
  mv "$tmp" "$ROOTFS"
  rm -f "$tmp.log"
  echo "systemd-container: rootfs ready in $(( $(date +%s) - t0 )) s ($(du -sh "$ROOTFS" | cut -f1))" >&2
}

# cgroup_dirs prints "hierarchy-dir" for every hierarchy this process is in (one per line),
# as a path on the host: /sys/fs/cgroup/<controllers>/<path> for v1, the cgroup2 mount for v2.
cgroup_dirs() {
  local v2=/sys/fs/cgroup/unified lines line ctl path
  [ "$(stat -f -c %T $v2 2>/dev/null)" = cgroup2fs ] || v2=/sys/fs/cgroup
  lines=$(cat /proc/self/cgroup) # read whole before anything moves
  while IFS= read -r line; do
    ctl=${line#*:}; path=${ctl#*:}; ctl=${ctl%%:*}
    case $ctl in
      "") echo "$v2$path" ;;
      name=systemd) echo "/sys/fs/cgroup/systemd$path" ;;
      name=*) ;;
      *) if [ -d "/sys/fs/cgroup/$ctl" ]; then echo "/sys/fs/cgroup/$ctl$path"; fi ;;
    esac
  done <<<"$lines"
}

# enter_cgroups NAME moves this process into a new sub-cgroup snpd-nspawn-NAME of its
# current cgroup in every hierarchy and lists them in $STATE/NAME/cgroups (for cleanup).
enter_cgroups() {
  local name=$1 d sub parent
  for d in $(cgroup_dirs); do
    sub=${d%/}/snpd-nspawn-$name
    mkdir -p "$sub"
    case $sub in
      /sys/fs/cgroup/cpuset/*) # a new cpuset has no cpus or mems: take the parent's
        parent=$(dirname "$sub")
        cat "$parent/cpuset.cpus" >"$sub/cpuset.cpus"
        cat "$parent/cpuset.mems" >"$sub/cpuset.mems" ;;
    esac
    echo "$sub" >>"$STATE/$name/cgroups"
    echo "$BASHPID" >"$sub/cgroup.procs"
  done
}

cmd_run() {
  need_root
  local name=$1; shift
  valid_name "$name"
  rootfs_ok || die "no rootfs at $ROOTFS: run '$0 setup' (scripts/install-deps.sh does)"
  if [ -f "$STATE/$name/pid" ] && kill -0 "$(cat "$STATE/$name/pid")" 2>/dev/null; then
    die "container $name is already running (pid $(cat "$STATE/$name/pid"))"
  fi
  rm -rf "${STATE:?}/$name" "${SCRATCH:?}/$name"
  mkdir -p "$STATE/$name" "$SCRATCH/$name"
  echo $$ >"$STATE/$name/pid" # first: prune spares the cgroups of a live container
  enter_cgroups "$name"
  local binds=(--bind-ro="$repo" --bind="$SCRATCH/$name")
  local goroot gomodcache
  if command -v go >/dev/null; then
    goroot=$(go env GOROOT); gomodcache=$(go env GOMODCACHE)
    [ -d "$goroot" ] && binds+=(--bind-ro="$goroot")
    [ -d "$gomodcache" ] && binds+=(--bind-ro="$gomodcache")
  fi
  # The shim is PID 1 until it execs systemd. nspawn already mounted the v1 controller
  # hierarchies, read-only: make them writable (this container's subtree only: its cgroup
  # namespace is rooted at snpd-nspawn-NAME).
  local shim='for d in /sys/fs/cgroup/*/; do
      [ -d "$d" ] && [ "$(stat -f -c %T "$d")" = cgroupfs ] && mount -o remount,bind,rw "$d"
    done
    exec /lib/systemd/systemd'
  exec systemd-nspawn --quiet --directory="$ROOTFS" --volatile=overlay \
    --machine="$name" --hostname="$name" --register=no --keep-unit \
    --private-network --kill-signal=SIGRTMIN+3 --console=read-only \
    "${binds[@]}" "$@" /bin/sh -c "$shim"
}

leader_of() {
  local name=$1 pid child
  pid=$(cat "$STATE/$name/pid" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  child=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null | awk '{print $1}')
  [ -n "$child" ] || return 1
  echo "$child"
}

cmd_leader() {
  local name=$1
  valid_name "$name"
  leader_of "$name" || die "container $name is not running"
}

cmd_wait() {
  local name=$1 secs=${2:-60} leader state deadline started_by
  valid_name "$name"
  deadline=$(( $(date +%s) + secs ))
  started_by=$(( $(date +%s) + 10 ))
  while :; do
    if leader=$(leader_of "$name"); then
      state=$(timeout 10 nsenter -t "$leader" -a systemctl is-system-running --wait 2>/dev/null) || true
      case $state in
        running) echo "$leader"; return 0 ;;
        degraded)
          nsenter -t "$leader" -a systemctl --failed --no-legend --no-pager >&2 || true
          echo "$leader"; return 0 ;;
      esac
    elif [ -f "$STATE/$name/pid" ] && ! kill -0 "$(cat "$STATE/$name/pid")" 2>/dev/null; then
      [ -f "$STATE/$name.log" ] && tail -20 "$STATE/$name.log" >&2
      die "container $name exited while booting"
    fi
    if [ ! -f "$STATE/$name/pid" ] && [ "$(date +%s)" -ge "$started_by" ]; then
      die "container $name was not started (no $STATE/$name/pid)"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || die "container $name: systemd not running after ${secs}s (state: ${state:-unknown})"
    sleep 0.2
  done
}

cmd_boot() {
  local name=$1; shift
  valid_name "$name"
  mkdir -p "$STATE"
  setsid bash "$0" run "$name" "$@" </dev/null >"$STATE/$name.log" 2>&1 &
  local i
  for i in $(seq 50); do [ -f "$STATE/$name/pid" ] && break; sleep 0.1; done
  cmd_wait "$name" 60
}

cmd_exec() {
  local name=$1; shift
  valid_name "$name"
  [ $# -gt 0 ] || die "exec: no command"
  local leader d root
  leader=$(leader_of "$name") || die "container $name is not running"
  # Join the container's cgroups first (its root in each hierarchy), so the command is
  # inside its cgroup namespace; systemd-run then moves it into a scope of its own.
  for d in $(cat "$STATE/$name/cgroups"); do
    root=$d
    [ -d "$d/payload" ] && root=$d/payload
    echo $$ >"$root/cgroup.procs" 2>/dev/null || true
  done
  local wd=/
  [ -d "/proc/$leader/root$PWD" ] && wd=$PWD
  exec nsenter --target="$leader" --all --wd="$wd" -- \
    systemd-run --quiet --scope --collect --slice=system.slice -- "$@"
}

cmd_stop() {
  local name=$1 pid i
  valid_name "$name"
  pid=$(cat "$STATE/$name/pid" 2>/dev/null) || true
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  cleanup "$name"
}

cleanup() {
  local name=$1 d
  for d in $(cat "$STATE/$name/cgroups" 2>/dev/null); do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -rf "${STATE:?}/$name" "${STATE:?}/$name.log" "${SCRATCH:?}/$name"
}

alive() { [ -f "$STATE/$1/pid" ] && kill -0 "$(cat "$STATE/$1/pid")" 2>/dev/null; }

cmd_prune() {
  local s name d
  for s in "$STATE"/*/; do
    [ -d "$s" ] || continue
    name=$(basename "$s")
    alive "$name" || cleanup "$name"
  done
  # cgroups of containers whose state is gone (rmdir removes only empty cgroups)
  find /sys/fs/cgroup -maxdepth 6 -type d -name 'snpd-nspawn-*' 2>/dev/null | while read -r d; do
    name=${d##*/snpd-nspawn-}
    alive "$name" || find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

sub=${1:-}
[ $# -gt 0 ] && shift
case $sub in
  setup) cmd_setup ;;
  check) rootfs_ok ;;
  run|boot) [ $# -ge 1 ] || die "usage: $0 $sub NAME [nspawn options]"; "cmd_$sub" "$@" ;;
  wait) [ $# -ge 1 ] || die "usage: $0 wait NAME [SECS]"; cmd_wait "$@" ;;
  exec) [ $# -ge 2 ] || die "usage: $0 exec NAME CMD..."; cmd_exec "$@" ;;
  leader|stop) [ $# -eq 1 ] || die "usage: $0 $sub NAME"; "cmd_$sub" "$1" ;;
  prune) cmd_prune ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
