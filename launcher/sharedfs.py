"""What every node of a multi-node job must see: the run directory, the interpreter and the shard manifest.

A path under a node-local folder (``/tmp``, ``/var/tmp``, ``/dev/shm``, or the folder the
profile's ``local_dir_var`` names on the submitting machine) exists on one node only: the other
nodes find no interpreter, write their part of the run where no one reads it, and the scheduler's
own log (written into the run directory) is lost. ``launcher submit`` refuses such a job in one
line; ``--allow-node-local-paths`` says the folder is shared on this cluster after all.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

from plumbing.errors import UserError

#: Folders that are node-local on every cluster this launcher knows.
NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm")


def local_roots(local_dir_var: str, env: Mapping[str, str]) -> Tuple[str, ...]:
    """The node-local folders: the fixed ones and the profile's scratch variable's value here, when set."""
    roots = list(NODE_LOCAL)
    value = env.get(local_dir_var, "") if local_dir_var else ""
    home = env.get("HOME", "")
    if os.path.isabs(value) and os.path.normpath(value) not in ("/", os.path.normpath(home) if home else "/"):
        roots.append(os.path.normpath(value))
    return tuple(dict.fromkeys(roots))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def node_local_root(path: str, roots: Iterable[str]) -> Optional[str]:
    """The node-local folder ``path`` lies under (as written or with its links resolved), or None."""
    forms = {os.path.abspath(path), os.path.realpath(path)}
    for root in roots:
        real_root = os.path.realpath(root)
        for form in forms:
            if _under(form, root) or _under(form, real_root):
                return root
    return None


def check_shared(paths: Sequence[Tuple[str, str]], nodes: int, roots: Iterable[str]) -> None:
    """Refuse (UserError, one line) the first ``(what, path)`` under a node-local folder when ``nodes`` > 1."""
    if nodes <= 1:
        return
    roots = tuple(roots)
    for what, path in paths:
        if not path:
            continue
        root = node_local_root(path, roots)
        if root is not None:
            raise UserError(
                f"{what} {path} is under {root}, which is local to each node, and the job has {nodes} "
                f"nodes: put it on a filesystem every node mounts (home, project or work space), or "
                f"add --allow-node-local-paths if {root} is shared on this cluster"
            )


def job_paths(run_dir: str, python: str, manifest: str) -> List[Tuple[str, str]]:
    """The ``(what, path)`` pairs of a job that every node reads or writes."""
    return [("--run-dir", run_dir), ("the interpreter", python), ("--data", manifest)]
