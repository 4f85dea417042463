#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Give a module BTF when its kernel's headers ship no vmlinux.

    module_btf.py KDIR RELEASE MODULE.ko

Kbuild encodes a module's BTF (split BTF: it continues the kernel's own) only
when the build tree has vmlinux, the base; Debian 6.1's linux-headers ship none
("Skipping BTF generation ... due to unavailability of vmlinux"), and without
BTF fentry cannot attach to the module's functions (kprobes instead). The base
is then taken from the boot image, /boot/vmlinuz-RELEASE: the .BTF section of
the vmlinux it compresses (gzip, xz, lzma, bzip2 or zstd), the same bytes as
that kernel's /sys/kernel/btf/vmlinux. pahole then runs as scripts/Makefile.modfinal
would, with the kernel's own flags (scripts/pahole-flags.sh). The module uses no
BTF_ID sets, so no resolve_btfids.

Best effort: a module that has BTF already, a kernel without
CONFIG_DEBUG_INFO_BTF_MODULES, or any failure (reason on stderr) leaves the
module as it is; exit status 0 either way.
"""
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib


def decompress(payload: bytes) -> bytes:
    if payload[:2] == b"\x1f\x8b":
        return zlib.decompressobj(wbits=31).decompress(payload)
    if payload[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
    if payload[:3] == b"\x5d\x00\x00":
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
    if payload[:3] == b"BZh":
        import bz2
        return bz2.BZ2Decompressor().decompress(payload)
    if payload[:4] == b"\x28\xb5\x2f\xfd":      # not in Python's standard library: the zstd command,
        # without the 4-byte decompressed size the kernel's build appends (zstd rejects it)
        return subprocess.run(["zstd", "-dcq"], input=payload[:-4], capture_output=True, check=True).stdout
    raise ValueError(f"unknown compression (magic {payload[:6].hex()})")


def vmlinux_of(image: bytes) -> bytes:
    """The ELF vmlinux of a boot image: itself, or an x86 bzImage's payload."""
    if image[:4] == b"\x7fELF":
        return image
    if image[0x202:0x206] != b"HdrS":
        raise ValueError("neither an ELF vmlinux nor an x86 bzImage")
    setup_sects = image[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    return decompress(image[start:start + payload_length])


def section(elf: bytes, wanted: str) -> bytes | None:
    """The contents of a little-endian ELF64 file's section, None if it has none."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx][4]
    for name, _type, _flags, _addr, offset, size in headers:
        if elf[names + name:elf.index(b"\0", names + name)] == wanted.encode():
            return elf[offset:offset + size]
    return None


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    kdir, release, ko = sys.argv[1:4]
    try:
        if "CONFIG_DEBUG_INFO_BTF_MODULES=y\n" not in read(f"{kdir}/include/config/auto.conf").decode():
            return 0                            # the kernel would ignore a module's BTF
        if section(read(ko), ".BTF") is not None:
            return 0                            # kbuild gave it BTF (the headers ship vmlinux)
    except (OSError, ValueError, IndexError, struct.error) as e:
        print(f"{ko}: left as it is: {e}", file=sys.stderr)
        return 0
    image = f"/boot/vmlinuz-{release}"
    bpftool = shutil.which("bpftool") or shutil.which("bpftool", path="/usr/sbin:/sbin")
    workdir = tempfile.mkdtemp(prefix=".btf-", dir=os.path.dirname(os.path.abspath(ko)))
    try:
        base = section(vmlinux_of(read(image)), ".BTF")
        if base is None or base[:2] != b"\x9f\xeb":
            raise ValueError(f"{image} has no BTF")
        with open(f"{workdir}/vmlinux.btf", "wb") as f:
            f.write(base)
        env = dict(os.environ, PAHOLE="pahole", LLVM_OBJCOPY="objcopy")
        flags = subprocess.run(["sh", f"{kdir}/scripts/pahole-flags.sh"], env=env, capture_output=True,
                               text=True, check=True).stdout.split()
        tmp = f"{workdir}/{os.path.basename(ko)}"
        shutil.copy2(ko, tmp)
        subprocess.run(["pahole", "-J", *flags, "--btf_base", f"{workdir}/vmlinux.btf", tmp],
                       env=env, capture_output=True, text=True, check=True)
        if section(read(tmp), ".BTF") is None:
            raise ValueError("pahole added no .BTF section")
        if bpftool:                             # libbpf parses it against that base
            subprocess.run([bpftool, "-B", f"{workdir}/vmlinux.btf", "btf", "dump", "file", tmp],
                           capture_output=True, text=True, check=True)
        os.replace(tmp, ko)
        print(f"  BTF [M]  {ko} (base: the BTF of {image}; the headers ship no vmlinux)")
    except (OSError, ValueError, IndexError, struct.error, EOFError, lzma.LZMAError, zlib.error,
            subprocess.CalledProcessError) as e:
        err = getattr(e, "stderr", None) or ""
        detail = (err.decode(errors="replace") if isinstance(err, bytes) else err).strip().splitlines()[-1:]
        print(f"{ko}: left without BTF (fentry on its functions falls back to kprobes): {e}"
              + (f": {detail[0]}" if detail else ""), file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
