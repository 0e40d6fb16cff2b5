"""Atomic file writes, shared by every part: a temporary file in the target's directory, renamed
into place, so a reader or a killed writer never sees a half-written file under the final name.

:func:`atomic_open` (and ``atomic_write_text``/``_bytes``, :func:`atomic_copy`) for writers that take
a file object; :func:`atomic_path` for those that need a path (h5py).
``durable=True`` also fsyncs the file and the directory (checkpoints, markers a resumed job acts on).
Temporary names are ``.NAME.tmp.XXXXXX`` (what the checkpoint store sweeps after a kill;
:func:`remove_temporaries` sweeps a folder). :func:`disk_error` turns a failed write (full disk,
quota, read-only file system) into one line naming the path and the bytes needed.
Importing this module is cheap (standard library only).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator, List, Optional, Union

from plumbing.errors import UserError

PathLike = Union[str, os.PathLike]


def _default_mode() -> int:
    """What ``open(path, "w")`` would give a new file (mkstemp's own files are 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_DEFAULT_MODE = _default_mode()


def fsync_dir(path: PathLike) -> None:
    """Make a rename or unlink in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename itself still happened
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: PathLike, mode: str = "wb", *, durable: bool = False, chmod: Optional[int] = None
) -> Iterator[IO]:
    """``with atomic_open(p) as f: ...`` writes to a temporary file; on success it becomes ``p``.

    On an exception the temporary file is removed and ``p`` is left as it was. The new file gets
    ``chmod`` or, by default, the permissions a plain ``open()`` would give it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp.", dir=str(path.parent))
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, _DEFAULT_MODE if chmod is None else chmod)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes, *, durable: bool = False, chmod: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb", durable=durable, chmod=chmod) as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, *, durable: bool = False, chmod: Optional[int] = None) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w", durable=durable, chmod=chmod) as f:
        f.write(text)


def atomic_copy(src: PathLike, dst: PathLike, *, durable: bool = False) -> None:
    """Copy the file ``src`` to ``dst`` atomically (see :func:`atomic_open`)."""
    with open(src, "rb") as fi, atomic_open(dst, "wb", durable=durable) as fo:
        shutil.copyfileobj(fi, fo, 16 << 20)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, temporary: Optional[str] = None, durable: bool = False) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)`` for writers that need a path, not a file (h5py).

    Yields a temporary path in ``p``'s directory (``temporary``, a file name, when given: a fixed
    name lets a rerun find what a killed writer left; else ``.NAME.tmp.PID``); on success it is
    renamed to ``p``, on an exception removed, ``p`` left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (temporary or f".{path.name}.tmp.{os.getpid()}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


# --------------------------------------------------------------------------- failed writes


class DiskWriteError(UserError):
    """A write failed for lack of space or permission; the message names the path and the bytes."""

    def __init__(
        self,
        message: str,
        path: PathLike,
        needed: Optional[int] = None,
        free: Optional[int] = None,
        errno_: Optional[int] = None,
    ):
        super().__init__(message)
        self.path = str(path)
        self.needed = needed
        self.free = free
        self.errno = errno_


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n} bytes ({n / scale:.1f} {unit})"
    return f"{n} bytes"


def free_bytes(path: PathLike) -> Optional[int]:
    """Bytes free to an unprivileged writer on the file system holding ``path`` (or its nearest
    existing parent), or None when it cannot be told."""
    p = Path(path)
    for q in [p] + list(p.parents):
        try:
            return shutil.disk_usage(q).free
        except OSError:
            continue
    return None


def disk_error(exc: OSError, path: PathLike, needed: Optional[int] = None, what: str = "") -> UserError:
    """One line for a failed write of ``path`` (``needed`` bytes, if known; ``what`` was being done).

    ENOSPC/EDQUOT: the bytes needed and free; EROFS, EACCES/EPERM: read-only or not writable. Other
    errors keep their text. Returns a :class:`DiskWriteError` (a UserError) to raise.
    """
    code = getattr(exc, "errno", None)
    doing = f" while {what}" if what else ""
    need = f"needs {_size(needed)}" if needed is not None else "needs more space"
    free = free_bytes(path)
    if code in (errno.ENOSPC, errno.EDQUOT):
        kind = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
        have = f", {_size(free)} free" if free is not None else ""
        msg = f"{path}: {kind}{doing}: {need}{have}; free some space and run the same command again to resume"
    elif code == errno.EROFS:
        msg = f"{path}: read-only file system{doing}" + (f" ({need})" if needed is not None else "")
    elif code in (errno.EACCES, errno.EPERM):
        msg = f"{path}: permission denied{doing}" + (f" ({need})" if needed is not None else "")
    else:
        text = str(exc).strip()
        reason = getattr(exc, "strerror", None) or (text.splitlines()[0] if text else type(exc).__name__)
        msg = f"{path}: cannot write{doing}: {reason}" + (f" ({need})" if needed is not None else "")
    return DiskWriteError(msg, path, needed, free, code)


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_open`'s (or the checkpoint store's) temporary names."""
    return name.startswith(".") and ".tmp." in name


def remove_temporaries(folder: PathLike) -> List[Path]:
    """Delete the temporary files a killed writer left directly in ``folder``; returns them."""
    removed: List[Path] = []
    d = Path(folder)
    if not d.is_dir():
        return removed
    for p in d.iterdir():
        if is_temporary_name(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
