#!/usr/bin/env bash
# fabriclab guest image builder.
#
#   build-images.sh OUT_DIR GUEST_BINARY
#
# Produces, from the current Debian kernel package (downloaded with `apt-get download`, unpacked
# with `dpkg -x`, never installed) and the statically linked guest program:
#
#   OUT_DIR/vmlinuz                      the kernel
#   OUT_DIR/<version>/vmlinuz            hard link (or copy) of the kernel
#   OUT_DIR/<version>/initrd.img         gzip'd newc cpio: /init = guest, modules, /etc/fabriclab
#   OUT_DIR/manifest.json                kernel version, per-image paths and sha256
#   OUT_DIR/cache/                       the kernel .deb and its unpacked tree (kept between runs)
#
# Versions: v1 (baseline), v2 (the "patched" image: same program, image=v2, /etc/fabriclab/patch),
# v3-broken (a bad patch: /etc/fabriclab/mode = fail-app, the app never starts).
#
# Cached: when OUT_DIR/.stamp matches sha256(guest binary) + sha256(this script) and every output
# exists, it exits at once. Delete OUT_DIR/.stamp to force a rebuild (e.g. after a new kernel
# package). FABRICLAB_KERNEL_VERSION=6.1.0-NN-amd64 pins the kernel instead of following
# linux-image-amd64.
set -euo pipefail

readonly VERSIONS=(v1 v2 v3-broken)
readonly WANTED_MODULES=(button evdev virtio_pci virtio_console virtio_blk virtio_net)

say() { printf '[build-images] %s\n' "$*"; }
die() { printf '[build-images] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$#" -eq 2 ] || die "usage: $0 OUT_DIR GUEST_BINARY"
OUT_DIR=$(realpath -m -- "$1")
GUEST=$(realpath -e -- "$2" 2>/dev/null) || die "guest binary '$2' not found"
if [ ! -f "$GUEST" ] || [ ! -x "$GUEST" ]; then die "guest binary '$GUEST' is not an executable file"; fi
case "$OUT_DIR" in *[\"\\]* | *$'\n'*) die "OUT_DIR must not contain quotes, backslashes or newlines";; esac
SCRIPT=$(realpath -e -- "${BASH_SOURCE[0]}")

for tool in sha256sum cpio gzip dpkg apt-get apt-cache; do
  command -v "$tool" >/dev/null || die "'$tool' is missing (run testbed/setup.sh)"
done
DEPMOD=$(PATH="$PATH:/usr/sbin:/sbin" command -v depmod) || die "'depmod' is missing (package kmod)"

mkdir -p "$OUT_DIR/cache"
# One builder per OUT_DIR at a time (parallel cmake builds, two agents).
if command -v flock >/dev/null; then
  exec 9>"$OUT_DIR/.lock"
  flock 9 || die "cannot lock $OUT_DIR/.lock"
fi

STAMP="$(sha256sum "$GUEST" | cut -d' ' -f1) $(sha256sum "$SCRIPT" | cut -d' ' -f1) ${FABRICLAB_KERNEL_VERSION:-}"
outputs_present() {
  if [ ! -f "$OUT_DIR/manifest.json" ] || [ ! -f "$OUT_DIR/vmlinuz" ]; then return 1; fi
  local v
  for v in "${VERSIONS[@]}"; do
    if [ ! -f "$OUT_DIR/$v/initrd.img" ] || [ ! -f "$OUT_DIR/$v/vmlinuz" ]; then return 1; fi
  done
}
if [ -f "$OUT_DIR/.stamp" ] && [ "$(cat "$OUT_DIR/.stamp")" = "$STAMP" ] && outputs_present; then
  say "up to date: $OUT_DIR ($(sed -n 's/.*"kernel_version": *"\([^"]*\)".*/\1/p' "$OUT_DIR/manifest.json"))"
  exit 0
fi
rm -f "$OUT_DIR/.stamp"

# --- kernel ------------------------------------------------------------------------------------
CACHE="$OUT_DIR/cache"
apt_updated=0
find_kernel_version() {
  if [ -n "${FABRICLAB_KERNEL_VERSION:-}" ]; then
    printf '%s\n' "$FABRICLAB_KERNEL_VERSION"
    return
  fi
  apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-amd64\)$/\1/p' | head -n1
}
KVER=$(find_kernel_version)
if [ -z "$KVER" ]; then
  say "linux-image-amd64 unknown to apt-cache; running apt-get update once"
  apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed (are we root? network?)"
  apt_updated=1
  KVER=$(find_kernel_version)
fi
[ -n "$KVER" ] || die "cannot find the kernel package behind linux-image-amd64"
case "$KVER" in *[!A-Za-z0-9.+~-]*) die "odd kernel version '$KVER'";; esac
PKG="linux-image-$KVER"

shopt -s nullglob
debs=("$CACHE/${PKG}_"*.deb)
if [ "${#debs[@]}" -eq 0 ]; then
  say "downloading $PKG (apt-get download, not installed)"
  if ! (cd "$CACHE" && apt-get download -q "$PKG" >"$CACHE/apt-download.log" 2>&1); then
    if [ "$apt_updated" -eq 0 ]; then
      say "apt-get download failed; running apt-get update once and retrying"
      apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed (are we root? network?)"
      # A stale package list may have named a kernel the mirror no longer carries.
      KVER=$(find_kernel_version)
      [ -n "$KVER" ] || die "cannot find the kernel package behind linux-image-amd64"
      PKG="linux-image-$KVER"
      (cd "$CACHE" && apt-get download -q "$PKG" >"$CACHE/apt-download.log" 2>&1) ||
        die "apt-get download $PKG failed (see $CACHE/apt-download.log)"
    else
      die "apt-get download $PKG failed (see $CACHE/apt-download.log)"
    fi
  fi
  debs=("$CACHE/${PKG}_"*.deb)
fi
[ "${#debs[@]}" -ge 1 ] || die "no $PKG .deb in $CACHE after download"
DEB="${debs[-1]}"

KTREE="$CACHE/kernel/$KVER"
# The tree is pruned to the modules we load (see below); another module set needs a fresh unpack.
UNPACK_ID="$(basename "$DEB") ${WANTED_MODULES[*]}"
if [ ! -f "$KTREE/.unpacked" ] || [ "$(cat "$KTREE/.unpacked")" != "$UNPACK_ID" ]; then
  say "unpacking $(basename "$DEB")"
  rm -rf "$KTREE"
  mkdir -p "$KTREE"
  dpkg -x "$DEB" "$KTREE" || die "dpkg -x $DEB failed"
  rm -f "$KTREE/.pruned"
  printf '%s\n' "$UNPACK_ID" >"$KTREE/.unpacked"
fi
VMLINUZ="$KTREE/boot/vmlinuz-$KVER"
MODDIR="$KTREE/lib/modules/$KVER"
[ -f "$VMLINUZ" ] || die "no kernel image at $VMLINUZ"
[ -d "$MODDIR" ] || die "no modules at $MODDIR"
# The .deb carries no modules.dep (its postinst runs depmod); generate it inside our tree only.
if [ ! -f "$MODDIR/modules.dep" ]; then
  "$DEPMOD" -b "$KTREE" "$KVER" || die "depmod -b $KTREE $KVER failed"
fi

# --- modules (deps first) ----------------------------------------------------------------------
norm() { local n=${1##*/}; n=${n%%.ko*}; printf '%s' "${n//-/_}"; }
declare -A DEP_LINE=() BUILTIN=() VISITED=()
while IFS= read -r line; do
  path=${line%%:*}
  DEP_LINE[$(norm "$path")]=$line
done <"$MODDIR/modules.dep"
if [ -f "$MODDIR/modules.builtin" ]; then
  while IFS= read -r path; do BUILTIN[$(norm "$path")]=1; done <"$MODDIR/modules.builtin"
fi
ORDER=()
visit() {
  local name=$1 line deps dep
  [ -z "${VISITED[$name]:-}" ] || return 0
  VISITED[$name]=1
  if [ -n "${BUILTIN[$name]:-}" ]; then
    say "module $name is built in"
    return 0
  fi
  line=${DEP_LINE[$name]:-}
  [ -n "$line" ] || die "module $name not found in $MODDIR/modules.dep"
  deps=${line#*:}
  for dep in $deps; do visit "$(norm "$dep")"; done
  ORDER+=("${line%%:*}")
}
for m in "${WANTED_MODULES[@]}"; do visit "$m"; done

# Keep the cache small (~10 MB instead of ~480 MB): only the kernel, the module metadata and the
# modules we load stay unpacked.
if [ ! -f "$KTREE/.pruned" ]; then
  declare -A KEEP=()
  for rel in "${ORDER[@]}"; do KEEP["$MODDIR/$rel"]=1; done
  while IFS= read -r -d '' file; do
    [ -n "${KEEP[$file]:-}" ] || rm -f -- "$file"
  done < <(find "$MODDIR/kernel" -type f -print0)
  find "$MODDIR/kernel" -depth -type d -empty -delete
  rm -rf "${KTREE:?}/usr"
  touch "$KTREE/.pruned"
fi

# Stage the modules once, decompressed, in load order.
MODSTAGE="$OUT_DIR/.staging/modules"
rm -rf "$OUT_DIR/.staging"
mkdir -p "$MODSTAGE"
MODULE_LIST=()
for rel in "${ORDER[@]}"; do
  src="$MODDIR/$rel"
  plain="lib/modules/$KVER/${rel%.xz}"
  plain=${plain%.zst}
  plain=${plain%.gz}
  mkdir -p "$MODSTAGE/$(dirname "$plain")"
  case "$rel" in
    *.ko.xz) xz -dc "$src" >"$MODSTAGE/$plain" || die "xz -d $src failed";;
    *.ko.zst) zstd -q -dc "$src" >"$MODSTAGE/$plain" || die "zstd -d $src failed";;
    *.ko.gz) gzip -dc "$src" >"$MODSTAGE/$plain" || die "gzip -d $src failed";;
    *.ko) cp "$src" "$MODSTAGE/$plain";;
    *) die "unexpected module file $rel";;
  esac
  MODULE_LIST+=("/$plain")
done

# --- initramfs images --------------------------------------------------------------------------
INIT="$CACHE/init.stripped"
if command -v strip >/dev/null; then
  strip -o "$INIT.tmp" "$GUEST" || die "strip $GUEST failed"
else
  cp "$GUEST" "$INIT.tmp"
fi
mv -f "$INIT.tmp" "$INIT"

cp -f "$VMLINUZ" "$OUT_DIR/vmlinuz.tmp"
chmod 0644 "$OUT_DIR/vmlinuz.tmp"
mv -f "$OUT_DIR/vmlinuz.tmp" "$OUT_DIR/vmlinuz"

build_image() {
  local version=$1 root="$OUT_DIR/.staging/$1"
  mkdir -p "$root"/{dev,proc,sys,etc/fabriclab}
  cp -a "$MODSTAGE/lib" "$root/lib"
  install -m 0755 "$INIT" "$root/init"
  printf '%s\n' "$version" >"$root/etc/fabriclab/image"
  printf '%s\n' "${MODULE_LIST[@]}" >"$root/etc/fabriclab/modules"
  case "$version" in
    v2) printf '%s\n' "fabriclab-patch-v2: patched image (same program, image version v2)" \
          >"$root/etc/fabriclab/patch";;
    v3-broken)
      printf '%s\n' "fabriclab-patch-v3: BROKEN patch, the app fails to start" \
        >"$root/etc/fabriclab/patch"
      printf '%s\n' "fail-app" >"$root/etc/fabriclab/mode";;
  esac
  # /dev/console lets the kernel give PID 1 its stdio; needs root (else the guest reopens it).
  if [ "$(id -u)" -eq 0 ]; then
    mknod -m 0600 "$root/dev/console" c 5 1
    mknod -m 0666 "$root/dev/null" c 1 3
  fi
  mkdir -p "$OUT_DIR/$version"
  (cd "$root" && find . -exec touch -h -d @0 {} + &&
    find . -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) |
    gzip -n -9 >"$OUT_DIR/$version/initrd.img.tmp" || die "cpio/gzip for $version failed"
  chmod 0644 "$OUT_DIR/$version/initrd.img.tmp"
  mv -f "$OUT_DIR/$version/initrd.img.tmp" "$OUT_DIR/$version/initrd.img"
  rm -f "$OUT_DIR/$version/vmlinuz"
  ln "$OUT_DIR/vmlinuz" "$OUT_DIR/$version/vmlinuz" 2>/dev/null ||
    cp "$OUT_DIR/vmlinuz" "$OUT_DIR/$version/vmlinuz"
}
for v in "${VERSIONS[@]}"; do build_image "$v"; done
rm -rf "$OUT_DIR/.staging"

# --- manifest ----------------------------------------------------------------------------------
sha() { sha256sum "$1" | cut -d' ' -f1; }
{
  printf '{\n  "kernel_version": "%s",\n' "$KVER"
  printf '  "kernel_package": "%s",\n' "$(basename "$DEB")"
  printf '  "guest_sha256": "%s",\n' "$(sha "$GUEST")"
  printf '  "modules": ['
  sep=""
  for m in "${MODULE_LIST[@]}"; do printf '%s"%s"' "$sep" "$m"; sep=", "; done
  printf '],\n  "images": [\n'
  sep=""
  for v in "${VERSIONS[@]}"; do
    printf '%s    {"version": "%s", "kernel": "%s", "initrd": "%s", "sha256_kernel": "%s", "sha256_initrd": "%s"}' \
      "$sep" "$v" "$OUT_DIR/$v/vmlinuz" "$OUT_DIR/$v/initrd.img" \
      "$(sha "$OUT_DIR/$v/vmlinuz")" "$(sha "$OUT_DIR/$v/initrd.img")"
    sep=$',\n'
  done
  printf '\n  ]\n}\n'
} >"$OUT_DIR/manifest.json.tmp"
mv -f "$OUT_DIR/manifest.json.tmp" "$OUT_DIR/manifest.json"
printf '%s\n' "$STAMP" >"$OUT_DIR/.stamp"

size_kib=$(( $(stat -c %s "$OUT_DIR/v1/initrd.img") / 1024 ))
say "built ${VERSIONS[*]} in $OUT_DIR: kernel $KVER, ${#MODULE_LIST[@]} modules, initrd ~${size_kib} KiB each"
