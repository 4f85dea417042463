#!/usr/bin/env bash
# The arm64 lab: a Debian 12 arm64 root file system with the backports 6.12
# arm64 kernel, its headers, bcc, bpftrace and bpftool, and the Python
# libraries mmntrace needs, in build/arm64/root. `mmntrace lab --kernel
# 6.12-arm64` boots it under qemu-system-aarch64 (TCG). Idempotent: a root that
# is complete (its stamp names the same kernel and requirements) is kept.
#
# The kernel is the same version as the host's amd64 6.12 (make setup): the
# test module cross-builds against the arm64 headers with the host's kbuild
# tools of that version (the arm64 package's fixdep/modpost are aarch64 ELF).
#
# mmdebstrap runs the arm64 maintainer scripts through qemu-user-static. The
# host's binfmt_misc is not touched: the build runs in a private user and mount
# namespace (uid 0..65535 mapped to themselves) with a binfmt_misc instance of
# its own (Linux 6.7 and later), where qemu-aarch64 is registered.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=build/arm64/root
STAMP=build/arm64/root.stamp
log() { printf 'arm64-root: %s\n' "$*" >&2; }
if [ "$(id -u)" != 0 ]; then      # it builds a root file system: as root, like setup.sh's apt steps
    command -v sudo >/dev/null || { log "not root and sudo is missing: run this as root"; exit 1; }
    exec sudo bash "$0" "$@"
fi

for p in qemu-system-arm qemu-user-static mmdebstrap arch-test gcc-aarch64-linux-gnu; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ -n "${missing[*]:-}" ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        >/tmp/mmntrace-arm64-apt.log 2>&1 || { tail -n 20 /tmp/mmntrace-arm64-apt.log; log "apt-get install failed"; exit 1; }
fi

kbuild=$(ls -d /usr/lib/linux-kbuild-6.12.* 2>/dev/null | sort -V | tail -n 1)
[ -n "$kbuild" ] || { log "no /usr/lib/linux-kbuild-6.12.*: run make setup first (the amd64 6.12 kernel and headers)"; exit 1; }
kver=${kbuild#/usr/lib/linux-kbuild-}          # 6.12.95+deb12
release="$kver-arm64"
uri=$(scripts/debian_uri.sh)

# What goes into the guest's Python: the host venv's versions of mmntrace's
# runtime and test dependencies, as aarch64 wheels (pyarrow is not in Debian 12).
reqs=$(.venv/bin/python -m pip freeze --disable-pip-version-check 2>/dev/null \
       | grep -iE '^(numpy|pandas|pyarrow|click|rich|matplotlib|prometheus.client|python-dateutil|tzdata|six|pillow|contourpy|cycler|fonttools|kiwisolver|pyparsing|packaging|markdown-it-py|mdurl|pygments|pytest|pytest-timeout|pluggy|iniconfig|hypothesis|attrs|sortedcontainers)==' \
       | sort)
want="$release
$reqs"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$ROOT_DIR/usr/bin/python3" ]; then
    log "ready: $ROOT_DIR ($release)"
    exit 0
fi

rm -rf "$ROOT_DIR" "$STAMP"
mkdir -p build/arm64
PKGS="udev,busybox-static,kmod,procps,util-linux,iproute2,python3,python3-bpfcc,bpftrace,bpftool,linux-image-$release,linux-headers-$release"
log "building $ROOT_DIR: Debian 12 arm64 with linux-image-$release (a few minutes)"

fifo=$(mktemp -u /tmp/mmntrace-arm64-ns.XXXXXX)
mkfifo "$fifo"
trap 'rm -f "$fifo"' EXIT
BINFMT=':qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F'
# The lab boots the kernel without an initramfs: none is built (INITRD=No for the
# kernel's hook, and update-initramfs diverted to true for initramfs-tools' own
# trigger: each build takes over 15 minutes under qemu-user)
# shellcheck disable=SC2016
unshare --user --mount --fork -- env INITRD=No FIFO="$fifo" BINFMT="$BINFMT" DIR="$ROOT_DIR" PKGS="$PKGS" URI="$uri" bash -c '
    set -euo pipefail
    read -r _ < "$FIFO"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    printf "%s" "$BINFMT" > /proc/sys/fs/binfmt_misc/register
    mmdebstrap --mode=root --arch=arm64 --variant=minbase --include="$PKGS" \
        --dpkgopt=path-exclude=/usr/share/man/* --dpkgopt=path-exclude=/usr/share/doc/* \
        --dpkgopt=path-exclude=/usr/share/locale/* \
        --aptopt="APT::Install-Recommends \"false\"" \
        --essential-hook="chroot \"\$1\" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs" \
        --essential-hook="ln -s /bin/true \"\$1/usr/sbin/update-initramfs\"" \
        bookworm "$DIR" "deb $URI bookworm main" "deb $URI bookworm-backports main"
' >/tmp/mmntrace-arm64-mmdebstrap.log 2>&1 &
ns=$!
sleep 0.5
echo "0 0 65536" > "/proc/$ns/uid_map"
echo "0 0 65536" > "/proc/$ns/gid_map"
echo go > "$fifo"
wait $ns || { tail -n 30 /tmp/mmntrace-arm64-mmdebstrap.log; log "mmdebstrap failed (log: /tmp/mmntrace-arm64-mmdebstrap.log)"; exit 1; }

log "installing the Python libraries (aarch64 wheels)"
site="$ROOT_DIR/usr/local/lib/python3.11/dist-packages"
mkdir -p "$site"
printf '%s\n' "$reqs" > build/arm64/requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    --python-version 3.11 --implementation cp --target "$site" -r build/arm64/requirements.txt \
    >/tmp/mmntrace-arm64-pip.log 2>&1 || { tail -n 20 /tmp/mmntrace-arm64-pip.log; log "pip failed"; exit 1; }

# The test module cross-builds against these headers (tests/kmod/Makefile KDIR=):
# a copy whose scripts and tools are the host's amd64 kbuild of the same version;
# its Makefile includes the linux-headers-*-common tree (architecture: all), which
# the host has from make setup.
hdr=build/arm64/headers
rm -rf "$hdr"
cp -a "$ROOT_DIR/usr/src/linux-headers-$release" "$hdr"
for l in "$hdr"/scripts "$hdr"/tools; do
    t=$(readlink "$l")
    ln -sfn "$kbuild/${t##*/}" "$l"
done
grep -q "^include /usr/src/linux-headers-$kver-common/" "$hdr/Makefile" && [ -d "/usr/src/linux-headers-$kver-common" ] \
    || { log "$hdr/Makefile wants a headers-common tree this machine lacks"; exit 1; }
printf '%s\n' "$want" > "$STAMP"
log "ready: $ROOT_DIR ($release; $(du -sh "$ROOT_DIR" | cut -f1))"
