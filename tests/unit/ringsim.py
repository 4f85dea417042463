"""A BPF ring buffer's data area in memory, written as the kernel writes it
(8-byte header: length, BUSY while being written; records at 8-byte aligned
positions that wrap past the area's end), for transport.consume_ring's tests."""

import numpy as np

from mmntrace.transport import RingReader


class Ring:
    def __init__(self, rec_size: int, size: int, start: int = 0):
        self.rec_size, self.size = rec_size, size
        self.stride = RingReader.stride_of(rec_size)
        self.data = np.zeros(size, np.uint8)
        self.cons_pos = np.array([start], np.uint64)
        self.prod = start
        self.written: list[bytes] = []

    def put(self, body: bytes, busy: bool = False) -> None:
        assert len(body) == self.rec_size
        hdr = np.uint32(self.rec_size | (RingReader.BUSY if busy else 0)).tobytes() + bytes(4)
        rec = hdr + body + bytes(self.stride - RingReader.HDR - self.rec_size)
        for i, b in enumerate(rec):     # byte by byte: a record may wrap past the end
            self.data[(self.prod + i) % self.size] = b
        self.prod += self.stride
        self.written.append(body)
