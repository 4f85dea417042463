"""Transport: how records and aggregates come from the kernel to user space.

:class:`EventBuffer` is where the tracer's records arrive, whichever way they
come: :class:`RingReader` consumes the BPF ring buffer in whole batches (the
perf buffer goes through bcc); :class:`MappedArray` reads and zeroes an
mmap-able BPF array (the --aggregate histograms) without a syscall per
element; :func:`fdinfo` reads a BPF map's or program's fdinfo, :func:`prog_counter`
a program's run counters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from . import bpfsys
from .errors import BpfLoadError


def fdinfo(fd: int) -> dict[str, str]:
    """/proc/self/fdinfo/FD as key -> value (BPF maps and programs report
    max_entries, run_time_ns, recursion_misses... there); {} if unreadable."""
    out = {}
    try:
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def prog_counters(fd: int, keys: tuple[str, ...] = ("run_time_ns", "run_cnt", "recursion_misses")) -> dict[str, int]:
    """A loaded program's run counters named in ``keys`` (run_time_ns, run_cnt,
    recursion_misses): from one bpf() call (mmntrace/bpfsys.py), else from its
    fdinfo; a counter the kernel does not keep is left out."""
    c = bpfsys.prog_counters(fd)
    if c is not None and all(k in c for k in keys):
        return {k: c[k] for k in keys}
    info = fdinfo(fd)
    return {k: int(info[k]) for k in keys if k in info}


def prog_counter(fd: int, key: str) -> int | None:
    """One run counter of a loaded program (:func:`prog_counters`); None where
    the kernel keeps no such counter."""
    return prog_counters(fd, (key,)).get(key)


class RingReader:
    """Consume a BPF ring buffer map directly: whole batches, no per-record callback.

    bcc's ring_buffer_poll() calls a Python function once per record, which
    capped streaming at a few ten thousand records/s in the lab (6.1: 1.5 M
    recorded, 3.6 M dropped in the benchmark). Every mmntrace record has the
    same size, so the records between the consumer and producer positions sit
    at a fixed stride in the data area: one numpy view finds the committed ones
    (the first BUSY header ends the batch), one copy takes them, one store
    releases the space (libbpf's ringbuf.c protocol).

    The data area is mapped once, not twice over as libbpf does so that a
    record that wraps past its end reads as one piece: the kernel maps every
    page of such a mapping at once, and a process' memory counts both copies
    (32 MiB for streaming's 16 MiB buffer). A record that wraps is put
    together from its two pieces here; a header (8 bytes, at an 8-byte
    aligned position) never wraps.
    """

    BUSY, DISCARD, HDR = 1 << 31, 1 << 30, 8

    def __init__(self, map_fd: int, rec_size: int):
        import mmap
        import select
        page = mmap.PAGESIZE
        size = self._max_entries(map_fd)
        self.stride = self.stride_of(rec_size)
        self.rec_size = rec_size
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(map_fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self.cons_pos = np.frombuffer(self._cons, np.uint64, 1)
        self.prod_pos = np.frombuffer(self._prod, np.uint64, 1)
        self.data = np.frombuffer(self._prod, np.uint8, size, offset=page)
        self._ep = select.epoll()
        self._ep.register(map_fd, select.EPOLLIN)
        self._map_fd = map_fd
        self.woke_other = False

    @classmethod
    def stride_of(cls, rec_size: int) -> int:
        """Bytes a record of ``rec_size`` takes in the ring: its header, 8-byte aligned."""
        return (rec_size + cls.HDR + 7) & ~7

    @staticmethod
    def _max_entries(fd: int) -> int:
        v = fdinfo(fd).get("max_entries")
        if v is None:
            raise BpfLoadError("cannot read the ring buffer's size")
        return int(v)

    def watch(self, fd: int) -> None:
        """Wake :meth:`poll` when ``fd`` is readable too (mmntrace/wake.py)."""
        import select
        self._ep.register(fd, select.EPOLLIN)

    def unwatch(self, fd: int) -> None:
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):
            pass

    def poll(self, timeout_ms: int) -> bytes:
        raw = self.consume()
        if raw:
            return raw
        ready = self._ep.poll(timeout_ms / 1000)
        # a watched fd (a signal's wakeup socket, a child's pidfd) woke it: the
        # recorder empties the socket only then, not with a syscall every pass
        self.woke_other = self.woke_other or any(fd != self._map_fd for fd, _ in ready)
        return self.consume()

    def woken(self) -> bool:
        """Did a watched fd wake a poll since the last call? (mmntrace/wake.py)"""
        w, self.woke_other = self.woke_other, False
        return w

    def consume(self) -> bytes:
        """The records committed when it was called, no more: a producer as
        fast as this copy would otherwise keep it here (in the lab, attaching a
        new subscriber's callbacks between two drains waited 2.2 s, the whole
        workload, for a drain to end). What comes after is the next call's."""
        return b"".join(consume_ring(self.data, self.cons_pos, int(self.prod_pos[0]), self.stride, self.rec_size))

    def close(self) -> None:
        self._ep.close()
        del self.cons_pos, self.prod_pos, self.data     # numpy views pin the mappings
        for m in (self._cons, self._prod):
            try:
                m.close()
            except BufferError:
                pass


class EventBuffer:
    """The records the BPF side sends (``events`` in bcc's module ``bpf``),
    gathered as they arrive: through the ring buffer's mapping
    (:class:`RingReader`), or through bcc's perf buffer, whose callback copies
    each record out (kernels before 5.8, or ``ringbuf=False``). :meth:`fill`
    gathers what has arrived, waiting up to a timeout; :meth:`take` hands it
    over as one byte string (concatenated records of ``rec_size`` bytes).
    ``on_lost``: the perf buffer's count of records it had no room for."""

    def __init__(self, bpf, rec_size: int, *, ringbuf: bool, pages: int, on_lost: Callable[[int], None]):
        self._chunks: list[bytes] = []
        self.ring: RingReader | None = None
        if ringbuf:
            self.ring = RingReader(bpf[b"events"].map_fd, rec_size)
            return
        import ctypes
        chunks, string_at = self._chunks, ctypes.string_at

        def cb(_cpu, data, size):
            # perf pads each sample so that size + 4 is a multiple of 8
            # (112-byte records arrive as 116 bytes): keep the record only
            if size >= rec_size:
                chunks.append(string_at(data, rec_size))
        bpf[b"events"].open_perf_buffer(cb, page_cnt=pages, lost_cb=on_lost)
        self._perf_poll = bpf.perf_buffer_poll

    def fill(self, timeout_ms: int) -> None:
        """Gather what has arrived, waiting up to ``timeout_ms`` for something."""
        if self.ring is None:
            self._perf_poll(timeout_ms)
            return
        raw = self.ring.poll(timeout_ms)
        if raw:
            self._chunks.append(raw)

    def take(self) -> bytes:
        """What was gathered since the last call."""
        if not self._chunks:
            return b""
        raw = b"".join(self._chunks)
        self._chunks.clear()
        return raw

    def watch(self, fd: int) -> bool:
        """Make :meth:`fill` return early when ``fd`` is readable (mmntrace/wake.py).
        False for the perf buffer, which bcc polls: its timeout is the only way out."""
        if self.ring is None:
            return False
        self.ring.watch(fd)
        return True

    def unwatch(self, fd: int) -> None:
        if self.ring is not None:
            self.ring.unwatch(fd)

    def woken(self) -> bool:
        """Did a watched fd wake :meth:`fill` since the last call? (Always, for
        the perf buffer: the caller then looks for itself.)"""
        return self.ring.woken() if self.ring is not None else True

    def close(self) -> None:
        """Unmap the ring buffer (bcc closes the perf buffer with its module)."""
        if self.ring is not None:
            self.ring.close()
            self.ring = None


def consume_ring(data: np.ndarray, cons_pos: np.ndarray, prod: int, stride: int, rec_size: int) -> list[bytes]:
    """The committed records from the consumer position ``cons_pos[0]`` up to
    ``prod`` in the ring's data area ``data`` (mapped once: a record may wrap
    past its end), as raw bytes, releasing their space as it goes (a store to
    ``cons_pos``); stops at the first record still being written.

    A drain takes a few hundred records at a time while a workload runs, so
    what each call costs counts as much as what each record does (in the
    lab's emulated guest this was a third of a streaming recorder's CPU): the
    headers are read in place, as a strided view of the area's 32-bit words,
    and one comparison tells a record ready (its header is exactly the
    record's length: not BUSY, not DISCARD) from the first that is not."""
    size = len(data)
    mask = size - 1
    words = data.view(np.uint32)
    step = stride // 4
    hdr_len = RingReader.HDR
    out = []
    while True:
        cons = int(cons_pos[0])
        n = (prod - cons) // stride
        if n <= 0:
            break
        off = cons & mask
        whole = min(n, (size - off) // stride)      # those before the end of the area
        if whole == 0:          # one record: its header here, its body in two pieces
            h = _header_at(words, off // 4)
            _check_header(h, rec_size)
            if h & RingReader.BUSY:
                break
            out.append(np.concatenate([data[off + hdr_len:], data[:stride - (size - off)]])[:rec_size].tobytes())
            cons_pos[0] = cons + stride
            continue
        bad = words[off // 4:off // 4 + whole * step:step] != rec_size
        k = int(bad.argmax())
        if bad[k]:              # the first record not ready: being written, or an error
            # read again, live: committed since the comparison is fine too (it
            # is taken next time); neither that nor BUSY is an error
            _check_header(_header_at(words, off // 4 + k * step), rec_size)
        else:
            k = whole
        if k == 0:
            break
        out.append(data[off:off + k * stride].reshape(k, stride)[:, hdr_len:hdr_len + rec_size].tobytes())
        cons_pos[0] = cons + k * stride    # release the space
        if k < whole:
            break
    return out


def _header_at(words: np.ndarray, i: int) -> int:
    """The ring's header word ``i`` as it is now (the producer writes it while
    we read: tests make it change between two reads here)."""
    return int(words[i])


def _check_header(h: int, rec_size: int) -> None:
    """A header is a record of ours, committed (exactly its length) or BUSY
    (being written); anything else (DISCARD, another length) is an error."""
    if h != rec_size and not h & RingReader.BUSY:
        raise BpfLoadError("unexpected record in the ring buffer")


class MappedArray:
    """A BPF array map created with BPF_F_MMAPABLE, read and zeroed whole
    through a shared mapping (one numpy view: no syscall per element)."""

    def __init__(self, table, shape: tuple, dtype):
        import mmap
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        size = (n + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        self._m = mmap.mmap(table.map_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.a = np.frombuffer(self._m, dtype, count=int(np.prod(shape))).reshape(shape)

    def snapshot(self) -> np.ndarray:
        return self.a.copy()

    def zero(self) -> None:
        self.a[...] = 0

    def close(self) -> None:
        self.a = None
        try:
            self._m.close()
        except BufferError:
            pass
