"""A directory only its user can touch, at a path other users may have guessed (node-local scratch).

:func:`private_dir` creates it with ``mkdir(path, 0o700)``, or accepts an existing one only when it
is a real directory (not a link), owned by this uid, closed to group and other, and carries the
caller's marker file; anything else is refused with one line naming the path and the reason (no
fallback to another name: the path was told to the other nodes and to the trainer). The directories
leading to it must not let another user swap it: each is owned by root or this uid and writable by
no one else (other-writable only with the sticky bit, as /tmp; group-writable only for our own group).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Optional

from plumbing.atomic import atomic_write_text
from plumbing.errors import UserError

MAX_LINKS = 40


@dataclass(frozen=True)
class PrivateDir:
    path: str
    created: bool  # False: an existing directory of ours, with our marker, was reused


def entry_problem(st: os.stat_result, uid: int) -> Optional[str]:
    """Why an existing entry (its ``lstat``) is not a private directory of ``uid``; None when it is."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not you (uid {uid})"
    if st.st_mode & 0o077:
        return f"is open to other users (mode {stat.S_IMODE(st.st_mode):04o}, expected 0700)"
    return None


def ancestor_problem(st: os.stat_result, uid: int, gid: int) -> Optional[str]:
    """Why a directory on the way to ours would let another user replace what is below it; None if not."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid not in (0, uid):
        return f"is owned by uid {st.st_uid} (another user could replace what is in it)"
    sticky = st.st_mode & stat.S_ISVTX
    if st.st_mode & stat.S_IWOTH and not sticky:
        return "is writable by every user and has no sticky bit"
    if st.st_mode & stat.S_IWGRP and not sticky and st.st_gid != gid:
        return f"is writable by group {st.st_gid} and has no sticky bit"
    return None


def path_problem(parent: str, uid: int, gid: int) -> Optional[str]:
    """Walk ``parent`` from ``/`` as the kernel would, checking every directory and link on the way."""
    todo = [p for p in os.path.abspath(parent).split("/") if p]
    current, links = "/", 0
    problem = ancestor_problem(os.lstat("/"), uid, gid)
    if problem:
        return f"/ {problem}"
    while todo:
        name = todo.pop(0)
        if name in (".", ""):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        step = os.path.join(current, name)
        st = os.lstat(step)
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in (0, uid):
                return f"{step} is a symbolic link owned by uid {st.st_uid}"
            links += 1
            if links > MAX_LINKS:
                return f"{step}: too many symbolic links"
            target = os.readlink(step)
            todo = [p for p in target.split("/") if p] + todo
            if target.startswith("/"):
                current = "/"
            continue
        problem = ancestor_problem(st, uid, gid)
        if problem:
            return f"{step} {problem}"
        current = step
    return None


def _refuse(what: str, path: str, problem: str) -> UserError:
    return UserError(f"{what} {path} {problem}: refusing to use it (remove it, or choose another place)")


def _read_marker(dir_fd: int, name: str) -> Optional[str]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(1 << 16).decode("utf-8", "replace")


def private_dir(
    path, what: str = "directory", marker: Optional[str] = None, marker_name: str = "", tighten: bool = False
) -> PrivateDir:
    """Create ``path`` private to this user (0700), or check the existing one (module docstring).

    ``marker``: text written to ``path/marker_name`` on creation; an existing directory is accepted
    only when that file holds exactly this text. ``tighten``: an existing directory of ours that no
    one else can write (e.g. 0755) is chmod-ed to 0700 and accepted (nothing in it can be another
    user's); without it such a directory is refused. Errors: one :class:`UserError` line.
    """
    path = os.path.abspath(os.fspath(path))
    uid, gid = os.geteuid(), os.getegid()
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        problem = path_problem(parent, uid, gid)
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot create its parent folder ({exc.strerror or exc})") from None
    if problem:
        raise UserError(f"{what} {path}: unsafe parent folder: {problem}; choose another place")
    created = True
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        created = False
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot create it ({exc.strerror or exc})") from None
    before = os.lstat(path)
    problem = entry_problem(before, uid)
    if (
        problem
        and not created
        and tighten
        and stat.S_ISDIR(before.st_mode)
        and before.st_uid == uid
        and not before.st_mode & 0o022
    ):
        problem = None  # ours and writable by no one else: nothing in it can be another user's
    if problem and not created:
        if stat.S_ISLNK(before.st_mode):
            problem += f" (to {os.readlink(path)})"
        raise _refuse(what, path, problem)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise _refuse(what, path, f"cannot be opened as a directory ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise _refuse(what, path, "was replaced while it was being checked")
        if created or tighten:
            os.fchmod(fd, 0o700)  # mkdir's mode went through the umask
        problem = entry_problem(os.fstat(fd), uid)
        if problem:
            raise _refuse(what, path, problem)
        if marker is not None:
            if created:
                atomic_write_text(os.path.join(path, marker_name), marker, durable=True)
            else:
                found = _read_marker(fd, marker_name)
                if found is None:
                    raise _refuse(what, path, f"has no {marker_name} marker: not made by this run")
                if found != marker:
                    raise _refuse(what, path, f"belongs to another run ({marker_name} says {found.strip()!r})")
    finally:
        os.close(fd)
    return PrivateDir(path=path, created=created)
