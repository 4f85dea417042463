#!/usr/bin/env bash
# mmntrace set-up for a Debian 12 machine. Idempotent: a second run that finds
# everything in place does no apt work and prints one line.
#
#  - adds the bookworm-backports suite, copying the URI of the machine's own
#    Debian source (no host name is written in this repository);
#  - installs QEMU, the newest Debian 6.1 and backports 6.12 kernels (and 6.12
#    PREEMPT_RT) with their
#    exact matching headers, bcc (python3-bpfcc), bpftrace, bpftool, numactl,
#    the tools to build kernel modules, and chromium (renders the HTML report in a test);
#  - makes .venv/ from /usr/bin/python3 with --system-site-packages (bcc lives in
#    Debian's dist-packages) and installs mmntrace editable with its dev extras,
#    and the lab (lab/: `mmntrace lab`, workloads, test harness), editable too.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { printf 'setup: %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "not root and sudo is missing: run this as root"; exit 1; }
    SUDO=sudo
fi

BPO=/etc/apt/sources.list.d/mmntrace-backports.sources
add_backports() {
    [ -f "$BPO" ] && return 0
    local uri
    uri=$(scripts/debian_uri.sh) || exit 1
    log "adding bookworm-backports from $uri"
    $SUDO tee "$BPO" >/dev/null <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    $SUDO apt-get update -q >/dev/null
}

# Newest linux-image-<abi>-[<flavour>-]amd64 of a series, from its metapackage
# (linux-image-amd64, or linux-image-rt-amd64 for the PREEMPT_RT flavour).
kernel_pkg() {  # $1 = series regex, e.g. '6\.1\.0-[0-9]+' or '6\.12\.[0-9]+\+deb12'; $2 = flavour- (optional)
    apt-cache show "linux-image-${2:-}amd64" 2>/dev/null \
      | grep -oE "linux-image-$1-${2:-}amd64" | sort -V | tail -n 1
}

# chromium: the unit test that renders the HTML report headless (skipped without it)
# bpfcc-tools: funclatency, a peer in the benchmarks (bench/lab_bench.py)
# pahole: the test module's BTF where the kernel headers ship no vmlinux (6.1, tests/kmod/module_btf.py)
BASE_PKGS="qemu-system-x86 python3-bpfcc bpfcc-tools bpftrace bpftool pahole numactl build-essential bc kmod
           python3-venv busybox-static cpio procps iproute2 util-linux chromium"

missing=()
for p in $BASE_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# Kernels: one of each series must be installed with its exact headers:
# 6.1 and 6.12 (generic flavour) and 6.12 PREEMPT_RT (`mmntrace lab --kernel 6.12-rt`).
have_series() {  # $1 = glob of the image in /boot; $2 = rt to want the rt flavour (default: not rt)
    local v
    for f in /boot/vmlinuz-$1; do
        [ -e "$f" ] || continue
        v=${f#/boot/vmlinuz-}
        case "$v" in *-rt-*) [ "${2:-}" = rt ] || continue ;; *) [ "${2:-}" = rt ] && continue ;; esac
        [ -d "/usr/src/linux-headers-$v" ] && return 0
    done
    return 1
}
need_kernels=0
have_series '6.1.0-*-amd64' || need_kernels=1
have_series '6.12.*-amd64' || need_kernels=1
have_series '6.12.*-rt-amd64' rt || need_kernels=1

if [ ${#missing[@]} -gt 0 ] || [ $need_kernels = 1 ]; then
    add_backports
    $SUDO apt-get update -q >/dev/null
    if [ $need_kernels = 1 ]; then
        k61=$(kernel_pkg '6\.1\.0-[0-9]+')
        k612=$(kernel_pkg '6\.12\.[0-9]+\+deb12')
        k612rt=$(kernel_pkg '6\.12\.[0-9]+\+deb12' rt-)
        [ -n "$k61" ] && [ -n "$k612" ] && [ -n "$k612rt" ] \
            || { log "cannot find Debian 6.1, 6.12 and 6.12-rt kernel packages (got '$k61' '$k612' '$k612rt')"; exit 1; }
        missing+=("$k61" "${k61/image/headers}" "$k612" "${k612/image/headers}" "$k612rt" "${k612rt/image/headers}")
    fi
    log "installing: ${missing[*]}"
    # INITRD=No: the lab boots the images directly over the host's root (no initramfs to build)
    $SUDO env DEBIAN_FRONTEND=noninteractive INITRD=No apt-get install -y -q --no-install-recommends "${missing[@]}" \
        >/tmp/mmntrace-apt.log 2>&1 || { tail -n 30 /tmp/mmntrace-apt.log; log "apt-get install failed (full log: /tmp/mmntrace-apt.log)"; exit 1; }
fi

# The guest boots these images as a normal user too: Debian installs them 0600.
$SUDO chmod a+r /boot/vmlinuz-* 2>/dev/null || true

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
    log "creating .venv (system site packages, for Debian's bcc)"
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.mmntrace-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ lab/pyproject.toml -nt "$stamp" ]; then
    log "installing mmntrace and the lab (lab/, development only), editable, with the dev extras into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" -e ./lab >/tmp/mmntrace-pip.log 2>&1 \
        || { tail -n 30 /tmp/mmntrace-pip.log; log "pip install failed (full log: /tmp/mmntrace-pip.log)"; exit 1; }
    touch "$stamp"
fi
log "ready ($(ls /boot/vmlinuz-* | sed 's|/boot/vmlinuz-||' | tr '\n' ' '))"
