#!/usr/bin/env bash
# fabriclab Debian guest image builder: a real Debian 12 VM (systemd, qemu-guest-agent, nginx)
# for "bring your own guest" drills.
#
#   build-debian-image.sh OUT_DIR      build (or find up to date) the images in OUT_DIR
#   build-debian-image.sh --stamp      print the content stamp (key a cache directory with it)
#
# Outputs (paths in the manifest are relative to OUT_DIR):
#   OUT_DIR/<version>/disk.qcow2   the OS disk (ext4 root file system, no partition table)
#   OUT_DIR/<version>/vmlinuz      the image's own kernel (boot: kernel) ...
#   OUT_DIR/<version>/initrd.img   ... and initramfs (MODULES=list: virtio, ext4)
#   OUT_DIR/<version>/cmdline      kernel command line (one line, root=/dev/vda rw console=ttyS0 ...)
#   OUT_DIR/<efi version>/disk.qcow2  the same root file system on a GPT disk that boots through
#                                  its own bootloader under UEFI (boot: disk, firmware: efi):
#                                  debian-efi-v1 from debian-v1's, debian-efi-v2 from debian-v2's
#                                  (testbed/debian/efi-disk.sh; no kernel files beside it)
#   OUT_DIR/manifest.json          per version: boot kind, sha256 of each file, virtual size
# Versions: debian-v1; debian-v2 (BUILD_ID and the page's "image" say debian-v2); debian-v3-broken
# (a bad patch: nginx's configuration is invalid, nginx never starts). v2 and v3 are v1's tree
# patched and packed again, not bootstrapped again.
#
# How: mmdebstrap (--variant=apt plus our packages, no Recommends, no docs) from the Debian
# mirror of this machine's apt sources, testbed/debian/customize.sh in the tree (our files from
# testbed/debian/rootfs, units enabled and masked, kernel modules trimmed to
# testbed/debian/modules.keep, initramfs rebuilt), then per version `mkfs.ext4 -d TREE` into a
# sparse raw file (no loop mount) and `qemu-img convert -c` to qcow2; for debian-v1 and v2 the same
# raw root file system also goes into an EFI variant (GPT + FAT ESP with a grub-mkstandalone
# BOOTX64.EFI, all built on plain files by testbed/debian/efi-disk.sh).
#
# Cache: OUT_DIR/.stamp = sha256 over this script and testbed/debian/**; when it matches and all
# outputs exist the script exits at once. Downloaded .debs are kept in FABRICLAB_DEB_CACHE
# (default /var/cache/fabriclab/debian-debs) so that a rebuild fetches only what changed.
# Environment: FABRICLAB_DEBIAN_MIRROR=URI (instead of the apt sources' Debian mirrors),
# FABRICLAB_DEBIAN_DISK_SIZE (virtual size of the OS disk, default 2G).
set -euo pipefail

readonly VERSIONS=(debian-v1 debian-v2 debian-v3-broken)
readonly SUITE=bookworm
readonly CMDLINE="root=/dev/vda rw console=ttyS0 quiet"
# The EFI variants: the image each is packed from, and the command line its GRUB passes (root is
# the disk's second partition; fabriclab.boot= tells a test that this GRUB booted the kernel).
declare -A EFI_OF=([debian-v1]=debian-efi-v1 [debian-v2]=debian-efi-v2)
readonly EFI_VERSIONS=(debian-efi-v1 debian-efi-v2)
readonly EFI_CMDLINE="root=/dev/vda2 rw console=ttyS0 quiet fabriclab.boot=grub-efi"
readonly PACKAGES=(systemd systemd-sysv udev dbus linux-image-amd64 initramfs-tools zstd
  e2fsprogs kmod netbase iproute2 qemu-guest-agent nginx-light curl jq)
DISK_SIZE=${FABRICLAB_DEBIAN_DISK_SIZE:-2G}
DEB_CACHE=${FABRICLAB_DEB_CACHE:-/var/cache/fabriclab/debian-debs}

say() { printf '[build-debian-image] %s\n' "$*"; }
die() { printf '[build-debian-image] ERROR: %s\n' "$*" >&2; exit 1; }

SCRIPT=$(realpath -e -- "${BASH_SOURCE[0]}")
TESTBED=$(dirname "$SCRIPT")
DEBIAN_SRC="$TESTBED/debian"
[ -d "$DEBIAN_SRC/rootfs" ] || die "missing $DEBIAN_SRC/rootfs (run from a fabriclab checkout)"

stamp() {
  (cd "$TESTBED" && find build-debian-image.sh debian -type f -print0 | LC_ALL=C sort -z |
    xargs -0 stat -c '%a %n' && find build-debian-image.sh debian -type f -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}
if [ "${1:-}" = "--stamp" ]; then stamp; exit 0; fi
[ "$#" -eq 1 ] && [ -n "$1" ] && [ "${1#-}" = "$1" ] || die "usage: $0 OUT_DIR | --stamp"
OUT_DIR=$(realpath -m -- "$1")
case "$OUT_DIR" in *[\"\\]* | *$'\n'*) die "OUT_DIR must not contain quotes, backslashes or newlines";; esac
STAMP=$(stamp)

outputs_present() {
  [ -f "$OUT_DIR/manifest.json" ] || return 1
  local v f
  for v in "${VERSIONS[@]}"; do
    for f in disk.qcow2 vmlinuz initrd.img cmdline; do [ -s "$OUT_DIR/$v/$f" ] || return 1; done
  done
  for v in "${EFI_VERSIONS[@]}"; do [ -s "$OUT_DIR/$v/disk.qcow2" ] || return 1; done
}
if [ -f "$OUT_DIR/.stamp" ] && [ "$(cat "$OUT_DIR/.stamp")" = "$STAMP" ] && outputs_present; then
  say "up to date: $OUT_DIR (stamp $STAMP)"
  exit 0
fi

# --- preconditions -----------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap root mode, chroot, file ownership in the image)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"
for tool in qemu-img sha256sum curl tar; do
  command -v "$tool" >/dev/null || die "'$tool' is missing (run testbed/setup.sh)"
done
# The EFI variants (testbed/debian/efi-disk.sh checks again; here before the long bootstrap).
for tool in sfdisk mkfs.vfat mcopy grub-mkstandalone; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null ||
    die "'$tool' is missing (run testbed/setup.sh: fdisk, dosfstools, mtools, grub-efi-amd64-bin)"
done
[ -d /usr/lib/grub/x86_64-efi ] || die "/usr/lib/grub/x86_64-efi is missing (run testbed/setup.sh: grub-efi-amd64-bin)"
MKE2FS=$(PATH="$PATH:/usr/sbin:/sbin" command -v mke2fs) || die "mke2fs is missing (package e2fsprogs)"
MKE2FS_VERSION=$("$MKE2FS" -V 2>&1 || true)
[[ $MKE2FS_VERSION =~ mke2fs\ 1\.(4[3-9]|[5-9][0-9]) ]] ||
  die "mke2fs >= 1.43 is needed for -d (have: ${MKE2FS_VERSION%%$'\n'*})"

# Debian mirrors of this machine's apt sources (deb822 and one-line), suites bookworm*, main.
mirror_lines() {
  if [ -n "${FABRICLAB_DEBIAN_MIRROR:-}" ]; then
    printf 'deb %s %s main\n' "$FABRICLAB_DEBIAN_MIRROR" "$SUITE" "$FABRICLAB_DEBIAN_MIRROR" "$SUITE-updates"
    return
  fi
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -n 's/#.*//; s/\[[^]]*\]//; s/^[[:space:]]*deb[[:space:]]\+\([^[:space:]]\+\)[[:space:]]\+\([^[:space:]]\+\).*/\1 \2/p' "$f"
  done | while read -r uri suite; do printf 'deb %s %s main\n' "$uri" "$suite"; done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS=""; FS="\n" }
      { types=""; uris=""; suites=""; enabled="yes"
        for (i = 1; i <= NF; i++) {
          line = $i; if (line ~ /^[[:space:]]*#/) continue
          key = line; sub(/:.*/, "", key); val = line; sub(/^[^:]*:[[:space:]]*/, "", val)
          key = tolower(key)
          if (key == "types") types = val; else if (key == "uris") uris = val
          else if (key == "suites") suites = val; else if (key == "enabled") enabled = tolower(val)
        }
        if (enabled == "no" || types !~ /(^|[[:space:]])deb([[:space:]]|$)/) next
        nu = split(uris, u, /[[:space:]]+/); ns = split(suites, s, /[[:space:]]+/)
        for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++)
          if (u[a] != "" && s[b] != "") printf "deb %s %s main\n", u[a], s[b]
      }' "$f"
  done
}
mapfile -t MIRRORS < <(mirror_lines | awk -v s="$SUITE" '$3 == s || $3 == s "-updates" || $3 == s "-security"' | sort -u)
[[ " ${MIRRORS[*]} " == *" $SUITE main "* ]] ||
  die "no Debian $SUITE mirror in /etc/apt/sources.list* (set FABRICLAB_DEBIAN_MIRROR=http://deb.debian.org/debian)"
for line in "${MIRRORS[@]}"; do
  read -r _ uri suite _ <<<"$line"
  curl -sf -m 20 -o /dev/null "${uri%/}/dists/$suite/InRelease" ||
    die "Debian mirror unreachable: ${uri%/}/dists/$suite/InRelease (network? proxy?)"
done

mkdir -p "$OUT_DIR" "$DEB_CACHE"
exec 9>"$OUT_DIR/.lock"
flock 9 || die "cannot lock $OUT_DIR/.lock"
# Another builder may have finished while we waited for the lock.
if [ -f "$OUT_DIR/.stamp" ] && [ "$(cat "$OUT_DIR/.stamp")" = "$STAMP" ] && outputs_present; then
  say "up to date: $OUT_DIR (stamp $STAMP)"
  exit 0
fi
rm -f "$OUT_DIR/.stamp"
BUILD="$OUT_DIR/.build"
ROOT="$BUILD/rootfs"
# Never rm -rf through a mount: a killed mmdebstrap can leave /dev, /proc, /sys mounted in ROOT.
cleanup() {
  local m
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
    awk -v b="$BUILD/" 'index($2, b) == 1 { print $2 }' /proc/mounts | sort -r)
  if awk -v b="$BUILD/" 'index($2, b) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
    say "not removing $BUILD: something is still mounted below it"
    return
  fi
  rm -rf --one-file-system "$BUILD"
}
trap cleanup EXIT
cleanup
[ ! -e "$BUILD" ] || die "cannot clear $BUILD (mounts below it?)"
mkdir -p "$BUILD"
START=$SECONDS

# --- bootstrap ---------------------------------------------------------------------------------
say "mmdebstrap $SUITE from: $(printf '%s; ' "${MIRRORS[@]}")"
include=$(IFS=,; printf '%s' "${PACKAGES[*]}")
nice -n 10 mmdebstrap --variant=apt --mode=root --format=directory \
  --include="$include" \
  --aptopt='Acquire::Languages "none"' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --skip=essential/unlink \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
  --setup-hook="sync-in '$DEB_CACHE' /var/cache/apt/archives/" \
  --customize-hook="find '$DEB_CACHE' -maxdepth 1 -name '*.deb' -delete" \
  --customize-hook="sync-out /var/cache/apt/archives '$DEB_CACHE'" \
  --customize-hook="nice -n 10 '$DEBIAN_SRC/customize.sh' \"\$1\"" \
  "$SUITE" "$ROOT" "${MIRRORS[@]}" >"$BUILD/mmdebstrap.log" 2>&1 || {
  tail -n 30 "$BUILD/mmdebstrap.log" >&2
  cp "$BUILD/mmdebstrap.log" "$OUT_DIR/mmdebstrap.log" 2>/dev/null || true
  die "mmdebstrap failed (log: $OUT_DIR/mmdebstrap.log)"
}
grep '^\[build-debian-image\]' "$BUILD/mmdebstrap.log" || true
BOOTSTRAP_S=$((SECONDS - START))
rm -f "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/cache/apt/*.bin
rm -rf "$ROOT"/var/lib/apt/lists/*

KVERS=("$ROOT"/usr/lib/modules/*)
[ "${#KVERS[@]}" -eq 1 ] && [ -d "${KVERS[0]}" ] || die "expected one kernel in the image, found: ${KVERS[*]##*/}"
KVER=${KVERS[0]##*/}
for f in "boot/vmlinuz-$KVER" "boot/initrd.img-$KVER"; do
  [ -s "$ROOT/$f" ] || die "the image has no /$f"
done

# --- per version: patch the tree, pack it ------------------------------------------------------
# /etc/os-release becomes a file of its own (Debian's is a link to /usr/lib/os-release).
OS_RELEASE_BASE=$(cat "$ROOT/usr/lib/os-release")
patch_tree() {
  local version=$1
  rm -f "$ROOT/etc/os-release" "$ROOT/etc/nginx/conf.d/fabriclab-bad-patch.conf"
  printf '%s\nIMAGE_ID=fabriclab-debian\nBUILD_ID=%s\n' "$OS_RELEASE_BASE" "$version" \
    >"$ROOT/etc/os-release"
  mkdir -p "$ROOT/etc/fabriclab"
  printf '%s\n' "$version" >"$ROOT/etc/fabriclab/image"
  case "$version" in
    debian-v3-broken)
      # A bad patch: an unknown directive, `nginx -t` (ExecStartPre) fails, nginx never starts.
      printf '# fabriclab debian-v3-broken: a bad patch\nfabriclab_bad_patch on;\n' \
        >"$ROOT/etc/nginx/conf.d/fabriclab-bad-patch.conf";;
  esac
}
pack() {
  local version=$1 dir="$OUT_DIR/$1"
  mkdir -p "$dir"
  rm -f "$BUILD/disk.raw"
  nice -n 10 "$MKE2FS" -q -t ext4 -L root -d "$ROOT" -E root_owner=0:0 "$BUILD/disk.raw" "$DISK_SIZE" >/dev/null ||
    die "mkfs.ext4 -d for $version failed"
  # zstd-compressed clusters: as small as zlib's, cheaper to read under TCG (QEMU >= 5.1).
  nice -n 10 qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$BUILD/disk.raw" \
    "$dir/disk.qcow2.tmp" ||
    die "qemu-img convert for $version failed"
  mv -f "$dir/disk.qcow2.tmp" "$dir/disk.qcow2"
  # Copies, not links: each file may carry a libvirt security label of its own.
  cp -f "$ROOT/boot/vmlinuz-$KVER" "$dir/vmlinuz"
  cp -f "$ROOT/boot/initrd.img-$KVER" "$dir/initrd.img"
  printf '%s\n' "$CMDLINE" >"$dir/cmdline"
  chmod 0644 "$dir"/*
  RAW_USED_MB=$(($(du -k "$BUILD/disk.raw" | cut -f1) / 1024))
  local efi=${EFI_OF[$version]:-}
  if [ -n "$efi" ]; then
    local t0=$SECONDS
    mkdir -p "$OUT_DIR/$efi"
    nice -n 10 bash "$DEBIAN_SRC/efi-disk.sh" "$BUILD/disk.raw" "$dir/vmlinuz" "$dir/initrd.img" \
      "$EFI_CMDLINE" "$OUT_DIR/$efi/disk.qcow2" || die "packing $efi failed"
    chmod 0644 "$OUT_DIR/$efi/disk.qcow2"
    EFI_S=$((EFI_S + SECONDS - t0))
  fi
}
EFI_S=0
declare -A RAW_MB=()
for v in "${VERSIONS[@]}"; do
  patch_tree "$v"
  pack "$v"
  RAW_MB[$v]=$RAW_USED_MB
  say "$v: disk.qcow2 $(($(stat -c %s "$OUT_DIR/$v/disk.qcow2") / 1048576)) MB (root file system ${RAW_USED_MB} MB)"
done

# --- manifest ----------------------------------------------------------------------------------
sha() { sha256sum "$1" | cut -d' ' -f1; }
vsize() { qemu-img info --output=json "$1" | sed -n 's/^ *"virtual-size": *\([0-9]*\).*/\1/p'; }
BUILD_S=$((SECONDS - START))
{
  printf '{\n  "builder": "testbed/build-debian-image.sh",\n  "stamp": "%s",\n' "$STAMP"
  printf '  "suite": "%s",\n  "kernel_version": "%s",\n' "$SUITE" "$KVER"
  printf '  "built_at": "%s",\n  "build_seconds": %d,\n  "efi_pack_seconds": %d,\n  "images": [\n' \
    "$(date -u +%FT%TZ)" "$BUILD_S" "$EFI_S"
  sep=""
  for v in "${VERSIONS[@]}"; do
    d="$OUT_DIR/$v"
    printf '%s    {"name": "%s", "boot": "kernel", "cmdline": "%s",\n' "$sep" "$v" "$CMDLINE"
    printf '     "disk": {"path": "%s/disk.qcow2", "format": "qcow2", "virtual_size": %s, "bytes": %s, "sha256": "%s"},\n' \
      "$v" "$(vsize "$d/disk.qcow2")" "$(stat -c %s "$d/disk.qcow2")" "$(sha "$d/disk.qcow2")"
    printf '     "kernel": {"path": "%s/vmlinuz", "sha256": "%s"},\n' "$v" "$(sha "$d/vmlinuz")"
    printf '     "initrd": {"path": "%s/initrd.img", "sha256": "%s"},\n' "$v" "$(sha "$d/initrd.img")"
    printf '     "cmdline_file": {"path": "%s/cmdline", "sha256": "%s"}}' "$v" "$(sha "$d/cmdline")"
    sep=$',\n'
  done
  for v in "${EFI_VERSIONS[@]}"; do
    d="$OUT_DIR/$v"
    printf '%s    {"name": "%s", "boot": "disk", "firmware": "efi",\n' "$sep" "$v"
    printf '     "disk": {"path": "%s/disk.qcow2", "format": "qcow2", "virtual_size": %s, "bytes": %s, "sha256": "%s"}}' \
      "$v" "$(vsize "$d/disk.qcow2")" "$(stat -c %s "$d/disk.qcow2")" "$(sha "$d/disk.qcow2")"
  done
  printf '\n  ]\n}\n'
} >"$OUT_DIR/manifest.json.tmp"
mv -f "$OUT_DIR/manifest.json.tmp" "$OUT_DIR/manifest.json"
printf '%s\n' "$STAMP" >"$OUT_DIR/.stamp"

say "built in ${BUILD_S} s (bootstrap + customize ${BOOTSTRAP_S} s, EFI variants ${EFI_S} s), kernel $KVER, stamp $STAMP"
for v in "${VERSIONS[@]}"; do
  d="$OUT_DIR/$v"
  say "  $v: disk.qcow2 $(du -m --apparent-size "$d/disk.qcow2" | cut -f1) MB (virtual $DISK_SIZE, root fs ${RAW_MB[$v]} MB used), vmlinuz $(du -k --apparent-size "$d/vmlinuz" | cut -f1) KiB, initrd.img $(du -k --apparent-size "$d/initrd.img" | cut -f1) KiB"
done
for v in "${EFI_VERSIONS[@]}"; do
  say "  $v: disk.qcow2 $(du -m --apparent-size "$OUT_DIR/$v/disk.qcow2" | cut -f1) MB (GPT: ESP with GRUB, kernel, initrd; root fs; boot: disk, firmware: efi)"
done
