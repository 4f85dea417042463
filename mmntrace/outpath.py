"""Output files: never written through a symbolic link the user did not name.

A report, a figure or a recording is often written as root into a shared
directory; a link planted at the output name must not redirect the write.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import UsageError


def refuse_symlink(p: str | Path) -> None:
    if Path(p).is_symlink():
        raise UsageError(f"{p} is a symbolic link: mmntrace does not write through links; "
                         f"name the real path instead")


def write_nofollow(p: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Create or replace the file ``p`` itself; a link planted there is refused (O_NOFOLLOW)."""
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            refuse_symlink(p)
        raise
    with os.fdopen(fd, "wb") as f:
        f.write(data)
