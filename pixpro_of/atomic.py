"""Atomic file writes, shared by every part: a temporary file in the target's directory, renamed
into place, so a reader or a killed writer never sees a half-written file under the final name.

``durable=True`` also fsyncs the file and the directory (checkpoints, markers a resumed job acts on).
Temporary names are ``.NAME.tmp.XXXXXX`` (what the checkpoint store sweeps after a kill).
Importing this module is cheap (standard library only).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Optional, Union

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
def atomic_open(path: PathLike, mode: str = "wb", *, durable: bool = False,
                chmod: Optional[int] = None) -> Iterator[IO]:
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
