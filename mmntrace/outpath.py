"""Every file mmntrace writes goes through here: atomic, never through a link, private.

A report, a figure or a recording is often written as root into a shared
directory; a link planted at the output name must not redirect the write, a
reader must never see half a file, and what can hold a kernel address (which
defeats KASLR) must not be readable by others. So:

* :func:`write_atomic` / :meth:`OutputDir.write` create a temporary file next
  to the target with ``O_CREAT|O_EXCL|O_NOFOLLOW``, give it its mode (0600
  unless the caller says why not) and its owner, write it, ``fsync`` it and
  rename it over the target. A symbolic link at the target is refused with
  one sentence (:data:`LINK_REFUSED`); the rename could not follow it anyway,
  but a user who named a link meant its target, and is told.
* :class:`OutputDir` makes (0700) or opens an output directory with
  ``O_NOFOLLOW`` and keeps it open: the files of a recording are created
  relative to that descriptor, so a directory swapped for a link while the
  recorder runs cannot divert them.
* Under ``sudo`` (root, with ``SUDO_UID``/``SUDO_GID`` naming another user),
  what is created is handed to that user (:func:`sudo_owner`), at creation,
  modes unchanged: ``sudo mmntrace record -o rec`` then ``mmntrace report
  rec`` works, even after a Ctrl-C. Callers that write a service's files
  (the daemon) or the lab's own pass ``hand_over=False``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, NamedTuple, Union

from .errors import UsageError

#: the one sentence (after the path) for an output that is a symbolic link
LINK_REFUSED = "is a symbolic link; mmntrace does not write through links"

#: what :func:`write_atomic` writes: the bytes, or a function that writes to a binary file object
Data = Union[bytes, bytearray, memoryview, Callable[[BinaryIO], None]]

#: ``chown(2)`` takes (uid_t)-1 as "leave unchanged": never a user to hand files to
_NO_ID = 0xFFFFFFFF


class Owner(NamedTuple):
    """The user and group that created files and directories are handed to."""
    uid: int
    gid: int


def _id(value: str | None) -> int | None:
    """A user or group id from the environment, or None when it is not one we may chown to."""
    if value is None or not value.strip().isdigit():
        return None
    n = int(value)
    return n if 0 < n < _NO_ID else None


def sudo_owner(environ: Mapping[str, str] | None = None, euid: int | None = None) -> Owner | None:
    """Who outputs are handed to: the user who ran ``sudo mmntrace ...``.

    None (files stay root's) unless this process is root and both
    ``SUDO_UID`` and ``SUDO_GID`` are valid non-root ids: absent, empty,
    non-numeric, 0 or -1 mean no hand-over.
    """
    env = os.environ if environ is None else environ
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    uid, gid = _id(env.get("SUDO_UID")), _id(env.get("SUDO_GID"))
    return Owner(uid, gid) if uid is not None and gid is not None else None


def _owner(hand_over: bool) -> Owner | None:
    return sudo_owner() if hand_over else None


def refuse_symlink(p: str | Path) -> None:
    """Raise the one sentence when ``p`` itself is a symbolic link (a link in its parents is the user's choice)."""
    if Path(p).is_symlink():
        raise UsageError(f"{p} {LINK_REFUSED}")


def _check_name(name: str) -> None:
    # a name is one path component: a host name such as "a/b" must not walk elsewhere
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"{name!r} cannot be a file or directory name")


def _write_all(fd: int, data: Data) -> None:
    if callable(data):
        with os.fdopen(fd, "wb", closefd=False) as f:
            data(f)
        return
    view = memoryview(data)
    while view:                 # a full disk first shortens a write, then fails it
        view = view[os.write(fd, view):]


def _set_mode_owner(fd: int, mode: int, owner: Owner | None) -> None:
    # os.open's mode passes through the umask: set it exactly, but only when it
    # differs (some shared file systems refuse chmod even when nothing changes)
    if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
        os.fchmod(fd, mode)
    if owner is not None:
        os.fchown(fd, owner.uid, owner.gid)


def _write_in(dir_fd: int, name: str, data: Data, mode: int, owner: Owner | None, shown: str | Path) -> None:
    """Write ``name`` in the open directory ``dir_fd`` atomically (``shown``: the path errors name)."""
    _check_name(name)
    try:
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise UsageError(f"{shown} {LINK_REFUSED}")
    except FileNotFoundError:
        pass
    # a unique name with O_EXCL: never an old temporary (a recorder killed by
    # SIGKILL leaves one), nor anything planted under the name we use
    # (os.urandom, not the secrets module: its import, hashlib and random with
    # it, is a tenth of a second of every start in the lab's emulated guests)
    tmp = f".{name}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        try:
            _set_mode_owner(fd, mode, owner)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)      # never leave a partial file behind
        except OSError:
            pass
        raise


def write_atomic(path: str | Path, data: Data, *, mode: int = 0o600, hand_over: bool = True) -> Path:
    """Create or replace the file ``path`` atomically, with ``mode``, never through a link.

    ``data`` is the bytes, or a function that writes them to a binary file
    object (``lambda f: pq.write_table(t, f)``). The parent directory must
    exist (links in it are followed: the user named that path). Under sudo the
    file is handed to the invoking user unless ``hand_over`` is False.
    Raises :class:`UsageError` for a link at ``path``, OSError otherwise.
    """
    p = Path(path)
    dfd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _write_in(dfd, p.name, data, mode, _owner(hand_over), p)
    finally:
        os.close(dfd)
    return p


def make_parents(path: str | Path, owner: Owner | None = None) -> None:
    """Create the missing parent directories of ``path`` (mode from the umask: they
    hold no output themselves), each handed to ``owner``."""
    missing = []
    for d in Path(path).parents:
        if os.path.lexists(d):
            break
        missing.append(d)
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue
        if owner is not None:
            os.chown(d, owner.uid, owner.gid, follow_symlinks=False)


def _open_dir(dir_fd: int | None, name: str | Path, shown: str | Path, mode: int,
              owner: Owner | None) -> tuple[int, bool]:
    """Make (``mode``, handed to ``owner``) or open the directory ``name``, never
    through a link; returns (descriptor, whether it was made)."""
    made = True
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        made = False
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(f"{shown} {LINK_REFUSED}") from None
        if e.errno == errno.ENOTDIR:
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise UsageError(f"{shown} {LINK_REFUSED}") from None   # a link to a file
            raise UsageError(f"{shown} exists and is not a directory") from None
        raise
    if made:        # a directory that was there keeps its mode and owner
        try:
            _set_mode_owner(fd, mode, owner)
        except BaseException:
            os.close(fd)
            raise
    return fd, made


class OutputDir:
    """An output directory, held open: files are created relative to it.

    Made with ``mode`` (0700: what it holds is private) and its missing
    parents made too; under sudo what is made is handed to the invoking user.
    A directory that exists is used as it is (its files are 0600); one that is
    a symbolic link is refused, and with ``must_be_empty`` one that holds
    anything.
    """

    def __init__(self, path: str | Path, *, mode: int = 0o700, hand_over: bool = True,
                 must_be_empty: bool = False, _fd: int | None = None, _owner_: Owner | None = None):
        self.path = Path(path)
        self.mode = mode
        self.fd: int | None = None
        if _fd is not None:             # a subdirectory opened by subdir()
            self.owner, self.fd = _owner_, _fd
            return
        self.owner = _owner(hand_over)
        refuse_symlink(self.path)
        make_parents(self.path, self.owner)
        self.fd, _made = _open_dir(None, self.path, self.path, mode, self.owner)
        if must_be_empty and os.listdir(self.fd):
            self.close()
            raise UsageError(f"{self.path} exists and is not empty: choose a new directory")

    def subdir(self, *names: str, mode: int | None = None) -> "OutputDir":
        """The directory ``self/names[0]/names[1]/...``, each made if missing, none a link."""
        m = self.mode if mode is None else mode
        fd, path = os.dup(self.fd), self.path
        try:
            for name in names:
                _check_name(name)
                path = path / name
                nfd, _made = _open_dir(fd, name, path, m, self.owner)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return OutputDir(path, mode=m, _fd=fd, _owner_=self.owner)

    def write(self, name: str, data: Data, *, mode: int = 0o600) -> Path:
        """Create or replace the file ``name`` in this directory (see :func:`write_atomic`)."""
        if self.fd is None:
            raise ValueError(f"{self.path} is closed")
        _write_in(self.fd, name, data, mode, self.owner, self.path / name)
        return self.path / name

    def listdir(self) -> list[str]:
        return os.listdir(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

