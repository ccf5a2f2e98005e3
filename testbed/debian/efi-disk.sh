#!/bin/bash
# Packs a root file system image into an OS disk that boots through its OWN bootloader under
# UEFI firmware (OVMF): the "boot: disk, firmware: efi" variant of the Debian guest.
#
#   efi-disk.sh ROOT_FS KERNEL INITRD CMDLINE OUT.qcow2
#
# ROOT_FS is a raw ext4 image (what build-debian-image.sh's `mkfs.ext4 -d` makes, a whole number
# of MiB). The disk, nothing mounted and no loop device:
#   GPT (sfdisk on a plain file)
#   p1  EFI system partition, FAT (mkfs.vfat on a file, filled with mtools):
#         EFI/BOOT/BOOTX64.EFI   grub-mkstandalone -O x86_64-efi, its grub.cfg built in: it finds
#                                this partition by /fabriclab/esp, loads the kernel and initrd
#                                from it with CMDLINE, no menu, no timeout
#         fabriclab/vmlinuz, fabriclab/initrd.img, fabriclab/esp
#   p2  Linux root: ROOT_FS written at its offset (dd, holes kept)
# then `qemu-img convert -c` (zstd) to OUT.qcow2. The kernel sits on the ESP so that GRUB reads
# FAT only (as systemd-boot and UKI setups do); the root file system is untouched, so its fstab
# (LABEL=root) holds. The firmware's fallback path EFI/BOOT/BOOTX64.EFI needs no NVRAM boot entry:
# a fresh or reset NVRAM boots the disk.
set -euo pipefail
say() { printf '[build-debian-image] %s\n' "$*"; }
die() { printf '[build-debian-image] ERROR: efi-disk.sh: %s\n' "$*" >&2; exit 1; }

[ "$#" -eq 5 ] || die "usage: efi-disk.sh ROOT_FS KERNEL INITRD CMDLINE OUT.qcow2"
ROOT_FS=$1 KERNEL=$2 INITRD=$3 CMDLINE=$4 OUT=$5
readonly ESP_MIB=64  # FAT16; kernel + initrd + grub take ~25 MiB, the rest are holes
readonly ESP_TYPE=C12A7328-F81F-11D2-BA4B-00A0C93EC3B8 LINUX_TYPE=0FC63DAF-8483-4772-8E79-3D69D8477DE4
# GRUB's modules: what the embedded grub.cfg uses, and what they need; nothing else is embedded.
readonly GRUB_MODULES="part_gpt fat search search_fs_file linux normal echo configfile efi_gop"

for f in "$ROOT_FS" "$KERNEL" "$INITRD"; do [ -s "$f" ] || die "no such file (or empty): $f"; done
case "$CMDLINE" in *[\"\\\$\;]* | *$'\n'*) die "CMDLINE must not contain quotes, backslashes, \$, ; or newlines";; esac
PATH="$PATH:/usr/sbin:/sbin"
for tool in sfdisk mkfs.vfat mmd mcopy grub-mkstandalone qemu-img dd; do
  command -v "$tool" >/dev/null || die "'$tool' is missing (run testbed/setup.sh: fdisk, dosfstools, mtools, grub-efi-amd64-bin)"
done
[ -d /usr/lib/grub/x86_64-efi ] || die "/usr/lib/grub/x86_64-efi is missing (package grub-efi-amd64-bin)"

root_bytes=$(stat -c %s "$ROOT_FS")
[ $((root_bytes % 1048576)) -eq 0 ] || die "$ROOT_FS is not a whole number of MiB ($root_bytes bytes)"
root_mib=$((root_bytes / 1048576))
total_mib=$((1 + ESP_MIB + root_mib + 1))  # 1 MiB for the GPT at each end

WORK=$(mktemp -d "$(dirname -- "$OUT")/.efi-disk.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT

# --- the bootloader ------------------------------------------------------------------------------
cat >"$WORK/grub.cfg" <<EOF
# fabriclab: built into BOOTX64.EFI by testbed/debian/efi-disk.sh
set timeout=0
search --no-floppy --file --set=root /fabriclab/esp
echo "fabriclab: booting the kernel from (\$root)"
linux /fabriclab/vmlinuz $CMDLINE
initrd /fabriclab/initrd.img
boot
EOF
grub-mkstandalone -O x86_64-efi -o "$WORK/BOOTX64.EFI" --modules="$GRUB_MODULES" \
  --install-modules="$GRUB_MODULES" --locales= --fonts= --themes= \
  "boot/grub/grub.cfg=$WORK/grub.cfg" || die "grub-mkstandalone failed"

# --- the EFI system partition --------------------------------------------------------------------
mkfs.vfat -C -n FABRICLAB -i 0fab0e51 "$WORK/esp.img" $((ESP_MIB * 1024)) >/dev/null ||
  die "mkfs.vfat failed"
printf 'fabriclab EFI system partition\n' >"$WORK/esp-marker"
export MTOOLS_SKIP_CHECK=1
mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT ::/fabriclab
mcopy -i "$WORK/esp.img" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$WORK/esp.img" "$KERNEL" ::/fabriclab/vmlinuz
mcopy -i "$WORK/esp.img" "$INITRD" ::/fabriclab/initrd.img
mcopy -i "$WORK/esp.img" "$WORK/esp-marker" ::/fabriclab/esp

# --- the disk: GPT, ESP, root --------------------------------------------------------------------
truncate -s "${total_mib}M" "$WORK/disk.raw"
sfdisk -q --no-reread --no-tell-kernel "$WORK/disk.raw" >/dev/null <<EOF || die "sfdisk failed"
label: gpt
unit: sectors
start=2048, size=$((ESP_MIB * 2048)), type=$ESP_TYPE, name="EFI system"
start=$(((1 + ESP_MIB) * 2048)), size=$((root_mib * 2048)), type=$LINUX_TYPE, name="root"
EOF
dd if="$WORK/esp.img" of="$WORK/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$ROOT_FS" of="$WORK/disk.raw" bs=1M seek=$((1 + ESP_MIB)) conv=notrunc,sparse status=none
nice -n 10 qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$WORK/disk.raw" "$OUT.tmp" ||
  die "qemu-img convert to $OUT failed"
mv -f -- "$OUT.tmp" "$OUT"
say "$(basename -- "$(dirname -- "$OUT")"): EFI disk (GPT, ESP ${ESP_MIB} MiB with grub $(du -k --apparent-size "$WORK/BOOTX64.EFI" | cut -f1) KiB, root ${root_mib} MiB) $(($(stat -c %s "$OUT") / 1048576)) MB"
