#!/bin/bash
# Customizes the freshly bootstrapped Debian tree ROOT (an mmdebstrap --customize-hook: /proc,
# /sys and /dev are mounted in ROOT while it runs). Version-independent: the per-version bits
# (os-release BUILD_ID, the broken nginx of v3) are patched by build-debian-image.sh afterwards.
#
#   customize.sh ROOT
set -euo pipefail
ROOT=$1
SRC=$(dirname "$(realpath -e "${BASH_SOURCE[0]}")")
say() { printf '[build-debian-image] %s\n' "$*"; }
die() { printf '[build-debian-image] ERROR: %s\n' "$*" >&2; exit 1; }
[ -d "$ROOT/etc" ] || die "customize.sh: '$ROOT' is not a root tree"

# --- our files ---------------------------------------------------------------------------------
tar -C "$SRC/rootfs" --owner=0 --group=0 --numeric-owner -cf - . | tar -C "$ROOT" -xpf -
rm -f "$ROOT/etc/nginx/sites-enabled/default"
ln -sfn ../sites-available/fabriclab "$ROOT/etc/nginx/sites-enabled/fabriclab"

# Identity comes at first boot: empty machine-id (systemd makes one), hostname from DHCP.
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
printf 'localhost\n' >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
rm -f "$ROOT/etc/resolv.conf"
: >"$ROOT/etc/resolv.conf"

# --- units -------------------------------------------------------------------------------------
chroot "$ROOT" systemctl enable --quiet systemd-networkd.service fabriclab-app.service \
  fabriclab-events.service
while read -r unit; do
  ln -sfn /dev/null "$ROOT/etc/systemd/system/$unit"
done < <(sed -n 's/#.*//; s/[[:space:]]//g; /./p' "$SRC/masked-units")

# --- kernel modules: keep the listed ones and their dependencies -------------------------------
norm() { local n=${1##*/}; n=${n%%.ko*}; printf '%s' "${n//-/_}"; }
for moddir in "$ROOT"/usr/lib/modules/*/; do
  moddir=${moddir%/}
  kver=${moddir##*/}
  [ -f "$moddir/modules.dep" ] || die "no modules.dep in $moddir"
  declare -A dep_line=() builtin=() keep=() seen=()
  while IFS= read -r line; do dep_line[$(norm "${line%%:*}")]=$line; done <"$moddir/modules.dep"
  while IFS= read -r path; do builtin[$(norm "$path")]=1; done <"$moddir/modules.builtin"
  visit() {
    local name=$1 line dep
    [ -z "${seen[$name]:-}" ] || return 0
    seen[$name]=1
    [ -z "${builtin[$name]:-}" ] || return 0
    line=${dep_line[$name]:-}
    [ -n "$line" ] || die "kernel $kver has no module '$name' (testbed/debian/modules.keep)"
    keep["$moddir/${line%%:*}"]=1
    for dep in ${line#*:}; do visit "$(norm "$dep")"; done
  }
  while read -r m; do visit "$m"; done < <(sed -n 's/#.*//; s/[[:space:]]//g; /./p' "$SRC/modules.keep")
  before=$(du -sm "$moddir" | cut -f1)
  while IFS= read -r -d '' file; do
    [ -n "${keep[$file]:-}" ] || rm -f -- "$file"
  done < <(find "$moddir/kernel" -type f -print0)
  find "$moddir/kernel" -depth -type d -empty -delete
  chroot "$ROOT" depmod -a "$kver"
  say "kernel $kver: kept ${#keep[@]} modules ($before MB -> $(du -sm "$moddir" | cut -f1) MB)"
  unset dep_line builtin keep seen
done
chroot "$ROOT" update-initramfs -u -k all >/dev/null

# --- trim --------------------------------------------------------------------------------------
# udev's hardware database only names USB/PCI vendors here; without it udev works the same.
rm -rf "$ROOT/etc/udev/hwdb.bin" "$ROOT/usr/lib/udev/hwdb.bin" "$ROOT/usr/lib/udev/hwdb.d"
rm -rf "$ROOT"/usr/share/{man,info,lintian,linda}/* "$ROOT"/usr/share/locale/*
find "$ROOT/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true
find "$ROOT/usr/share/doc" -depth -type d -empty -delete 2>/dev/null || true
rm -rf "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old "$ROOT"/var/log/*.log \
  "$ROOT"/var/log/apt/*
