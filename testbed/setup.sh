#!/usr/bin/env bash
# fabriclab machine set-up. Idempotent: installs only what is missing, prepares what libvirt
# needs on a machine without systemd, and stops with a clear message when it cannot.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config ninja-build
  libvirt-dev libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev
  libspdlog-dev libfmt-dev libgtest-dev libgmock-dev libsqlite3-dev libcli11-dev
  libyaml-cpp-dev libssl-dev
  qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  cpio gzip xz-utils zstd kmod iproute2
  haproxy dnsmasq-base
  # testbed/build-debian-image.sh (the Debian guest images; it checks for each of these) and
  # testbed/libvirtd.sh (a private system-mode libvirtd: unshare, flock; virsh is libvirt-clients)
  mmdebstrap debian-archive-keyring e2fsprogs curl tar util-linux
  # the house style check (tests/format_check.sh)
  clang-format
  # its EFI variant (a GPT disk with an ESP and GRUB, built on plain files) and the UEFI firmware
  # the agent boots such images with (OVMF_CODE_4M.fd, OVMF_VARS_4M.fd)
  fdisk dosfstools mtools grub-efi-amd64-bin ovmf
)

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    die "must run as root or with password-less sudo (needed for apt-get and the libvirt-qemu user)"
  fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
  # dpkg-query's status tells an installed package from a removed one whose config remains.
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = "installed" ] || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${#missing[@]} missing packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get update -qq; then
    die "apt-get update failed: no network to the Debian package mirror? (needed: ${missing[*]})"
  fi
  # haproxy's package would start a system-wide haproxy (init script) in this namespace: the
  # project starts its own, inside the rack's namespace, so keep services from starting.
  policy_rc=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy_rc" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy_rc" >/dev/null
    $SUDO chmod +x "$policy_rc"
    own_policy=1
  fi
  install_ok=1
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/fabriclab-apt.log 2>&1 || install_ok=0
  [ "$own_policy" -eq 0 ] || $SUDO rm -f "$policy_rc"
  if [ "$install_ok" -eq 0 ]; then
    tail -20 /tmp/fabriclab-apt.log >&2
    die "apt-get install failed (log: /tmp/fabriclab-apt.log)"
  fi
else
  say "all ${#PACKAGES[@]} packages present"
fi

# libvirt's QEMU driver runs guests as libvirt-qemu when it runs as root; on a machine where the
# package's postinst could not create the account (no systemd, containers) create it here.
if ! getent group libvirt-qemu >/dev/null; then $SUDO groupadd -r libvirt-qemu; fi
if ! getent passwd libvirt-qemu >/dev/null; then
  $SUDO useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
fi
for d in /var/log/libvirt /var/run/libvirt /var/lib/libvirt; do $SUDO mkdir -p "$d"; done

# browser tests (dashboard): Debian's chromium, driven by playwright-core from tests/browser's
# lockfile (playwright's own browser download is never used).
if [ ! -x /usr/bin/chromium ]; then
  say "installing chromium (dashboard browser tests)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || die "apt-get update failed: no network to the Debian package mirror? (needed: chromium)"
  if ! $SUDO apt-get install -y -qq --no-install-recommends chromium >/tmp/fabriclab-apt-chromium.log 2>&1; then
    tail -20 /tmp/fabriclab-apt-chromium.log >&2
    die "apt-get install chromium failed (log: /tmp/fabriclab-apt-chromium.log)"
  fi
fi
browser_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/browser"
if [ ! -d "$browser_dir/node_modules/playwright-core" ]; then
  command -v npm >/dev/null 2>&1 || die "npm not found (needed for the dashboard browser tests in $browser_dir)"
  say "installing playwright-core (tests/browser)"
  if ! (cd "$browser_dir" && npm ci --no-audit --no-fund --loglevel=error) >/tmp/fabriclab-npm.log 2>&1; then
    tail -20 /tmp/fabriclab-npm.log >&2
    die "npm ci in $browser_dir failed (log: /tmp/fabriclab-npm.log)"
  fi
fi
# end: browser tests (dashboard)

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after install"
say "ready"
