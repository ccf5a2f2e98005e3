#!/usr/bin/env bash
# A private, system-mode libvirtd for tests of lab-host mode (`--hypervisor qemu:///system`),
# started as root without systemd and without touching a libvirtd the machine may already run.
#
#   libvirtd.sh start DIR   start it (waits until it answers); prints its URI on stdout:
#                             qemu:///system?socket=DIR/libvirt-sock
#   libvirtd.sh stop DIR    SIGTERM, wait, SIGKILL if needed; then SIGKILL any QEMU it left
#   libvirtd.sh uri DIR     print the URI
#
# Why a mount namespace: a privileged libvirtd keeps its state at fixed paths that no option
# moves (/run/libvirt/qemu with the QEMU driver's driver.pid lock, /etc/libvirt/qemu for defined
# domains, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt). A second daemon on the same
# paths would fight the system one for the lock and see its domains. So the daemon runs in a
# private mount namespace (unshare) where those five directories are bind mounts of DIR/{run,etc,
# lib,cache,log}; everything else (the images, the agent's state directory, this DIR) is the
# machine's own file system, seen the same by the daemon, its QEMUs and the test. Its sockets
# and pid file are in DIR itself (libvirtd.conf: unix_sock_dir; --pid-file), reachable from
# outside the namespace; no TCP/TLS listener.
#
# The QEMU driver's configuration is DIR/etc/qemu.conf: the packaged defaults (QEMU runs as
# libvirt-qemu:libvirt-qemu, dynamic ownership and remember_owner on, so the DAC labelling of a
# real lab host happens here too: files QEMU opens must be reachable by libvirt-qemu) except
# what a machine without systemd lacks: no virtlogd (stdio_handler = "file") and no cgroup
# placement (cgroup_controllers = [], so the host's cgroup tree is left alone).
# Requires: root, libvirt-daemon + libvirt-daemon-driver-qemu, libvirt-clients (virsh),
# util-linux (unshare), the libvirt-qemu user (testbed/setup.sh makes all of these so).
set -euo pipefail

say() { printf '[libvirtd.sh] %s\n' "$*" >&2; }
die() { printf '[libvirtd.sh] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$#" -eq 2 ] || die "usage: $0 start|stop|uri DIR"
verb=$1
if [ -z "$2" ] || [ "${2#-}" != "$2" ]; then die "DIR must be a path"; fi
DIR=$(realpath -m -- "$2")
case "$DIR" in *[\"\\\'[:space:]]*) die "DIR must not contain quotes, backslashes or spaces: $DIR";; esac
# sun_path holds 108 bytes; the longest socket is DIR/libvirt-admin-sock.
[ "${#DIR}" -le 80 ] || die "DIR is too long for libvirt's sockets (keep it under 80 characters): $DIR"
URI="qemu:///system?socket=$DIR/libvirt-sock"
PIDFILE=$DIR/libvirtd.pid
# The directories a privileged libvirtd owns, and their private stand-ins under DIR.
readonly MOUNTS=("run:/run/libvirt" "etc:/etc/libvirt" "lib:/var/lib/libvirt"
  "cache:/var/cache/libvirt" "log:/var/log/libvirt")

daemon_pid() {
  local pid
  [ -s "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = libvirtd ] || return 1
  printf '%s\n' "$pid"
}

# The QEMUs of this daemon: processes whose /run/libvirt (seen through /proc/PID/root, i.e. in
# their own mount namespace) is this DIR/run. Neither a pid file nor a command line tells them
# from another daemon's: both name /run/libvirt/qemu/NAME and domain names repeat.
qemu_pids() {
  local ours p pid
  ours=$(stat -c %d:%i "$DIR/run" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    case "$(cat "$p/comm" 2>/dev/null)" in qemu*) ;; *) continue;; esac
    [ "$(stat -L -c %d:%i "$p/root/run/libvirt" 2>/dev/null)" = "$ours" ] || continue
    pid=${p#/proc/}
    printf '%s\n' "$pid"
  done
}

write_config() {
  mkdir -p "$DIR"
  chmod 0711 "$DIR"  # QEMU (libvirt-qemu) must reach the guests' files if a test puts them here
  local m
  for m in "${MOUNTS[@]}"; do mkdir -p "$DIR/${m%%:*}"; done
  mkdir -p "$DIR/etc/qemu" "$DIR/lib/qemu" "$DIR/cache/qemu" "$DIR/log/qemu" "$DIR/run/qemu"
  cat >"$DIR/libvirtd.conf" <<EOF
# private libvirtd (testbed/libvirtd.sh): sockets in this directory, root only, no network
unix_sock_dir = "$DIR"
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
listen_tls = 0
listen_tcp = 0
log_outputs = "3:file:$DIR/libvirtd.log"
EOF
  cat >"$DIR/etc/qemu.conf" <<'EOF'
# private libvirtd (testbed/libvirtd.sh): the packaged defaults, minus systemd's services
user = "libvirt-qemu"
group = "libvirt-qemu"
dynamic_ownership = 1
remember_owner = 1
stdio_handler = "file"
cgroup_controllers = [ ]
EOF
}

# /dev/kvm as a lab host has it, for the daemon's namespace: usable by QEMU's user (udev makes it
# root:kvm 0660 and the package puts libvirt-qemu in group kvm). Where only root may open it (a
# sandbox's root:root 0600), libvirt throws its QEMU capabilities away at every lookup ("KVM was
# enabled when probing ..., but it is not available now") and probes QEMU again, about 4 s each
# time: a bare domain took 36 s to start and the agent's first create ran past its 60 s. So a node
# of our own with the same device numbers, group libvirt-qemu, is bound over /dev/kvm in the
# daemon's namespace only (the machine's /dev is not touched). Prints the mount command to chain
# ("" when nothing is needed or DIR's file system allows no device node).
kvm_bind() {
  [ -c /dev/kvm ] || return 0
  runuser -u libvirt-qemu -- test -r /dev/kvm -a -w /dev/kvm 2>/dev/null && return 0
  rm -f "$DIR/kvm"
  if mknod -m 0660 "$DIR/kvm" c "$((0x$(stat -c %t /dev/kvm)))" "$((0x$(stat -c %T /dev/kvm)))" &&
    chgrp libvirt-qemu "$DIR/kvm"; then
    printf "mount --bind '%s' /dev/kvm && " "$DIR/kvm"
  else
    say "warning: no /dev/kvm for libvirt-qemu under $DIR (mounted nodev?): every domain start re-probes QEMU"
  fi
}

start() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (a system-mode libvirtd)"
  local bin
  bin=$(PATH="$PATH:/usr/sbin:/sbin" command -v libvirtd) || die "libvirtd is missing (package libvirt-daemon; run testbed/setup.sh)"
  [ -e /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so ] ||
    compgen -G '/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so' >/dev/null ||
    die "libvirt's QEMU driver is missing (package libvirt-daemon-driver-qemu; run testbed/setup.sh)"
  command -v virsh >/dev/null || die "virsh is missing (package libvirt-clients; run testbed/setup.sh)"
  command -v unshare >/dev/null || die "unshare is missing (package util-linux)"
  getent passwd libvirt-qemu >/dev/null || die "no libvirt-qemu user (run testbed/setup.sh)"
  if pid=$(daemon_pid); then die "a libvirtd (pid $pid) already runs for $DIR: stop it first"; fi
  write_config
  rm -f "$PIDFILE" "$DIR"/libvirt-sock "$DIR"/libvirt-sock-ro "$DIR"/libvirt-admin-sock
  local binds="" m
  for m in "${MOUNTS[@]}"; do
    mkdir -p "${m#*:}"  # the mount point on the machine (an empty directory if it was missing)
    binds+="mount --bind '$DIR/${m%%:*}' '${m#*:}' && "
  done
  binds+=$(kvm_bind)
  # --daemon: the parent returns once the daemon has initialised (or failed to); the daemon stays
  # in the namespace, which lives as long as it or one of its QEMUs does.
  if ! unshare --mount --propagation private -- sh -c \
    "${binds}exec '$bin' --daemon --config '$DIR/libvirtd.conf' --pid-file '$PIDFILE'" \
    >"$DIR/libvirtd.out" 2>&1; then
    tail -n 20 "$DIR/libvirtd.out" "$DIR/libvirtd.log" 2>/dev/null >&2 || true
    die "libvirtd did not start (logs: $DIR/libvirtd.out, $DIR/libvirtd.log)"
  fi
  for _ in $(seq 1 100); do
    if virsh -q -c "$URI" version >/dev/null 2>&1; then
      say "libvirtd $(daemon_pid || echo '?') answers on $URI"
      printf '%s\n' "$URI"
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$DIR/libvirtd.log" >&2 2>/dev/null || true
  stop >/dev/null 2>&1 || true
  die "libvirtd did not answer on $URI within 10 s (log: $DIR/libvirtd.log)"
}

stop() {
  local pid left=""
  if pid=$(daemon_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    if [ -d "/proc/$pid" ]; then
      say "libvirtd $pid ignored SIGTERM for 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  # libvirtd leaves running guests running when it stops (by design); these are ours to end.
  left=$(qemu_pids | tr '\n' ' ')
  if [ -n "$left" ]; then
    say "killing QEMU processes the daemon left running: $left"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    for _ in $(seq 1 50); do [ -z "$(qemu_pids)" ] && break; sleep 0.1; done
    [ -z "$(qemu_pids)" ] || die "QEMU processes of $DIR survived SIGKILL: $(qemu_pids | tr '\n' ' ')"
  fi
  rm -f "$PIDFILE"
}

case "$verb" in
  start) start ;;
  stop) stop ;;
  uri) printf '%s\n' "$URI" ;;
  *) die "usage: $0 start|stop|uri DIR" ;;
esac
