"""A DataLoader worker whose trainer was killed says nothing (pixpro_of/train/data.py ``_OrphanQuiet``).

The trainer's death closes its end of the worker's file-descriptor channel before the kernel's
death signal reaches the worker; the worker's hook must swallow that one error when its parent is
gone, and report everything else as usual. The whole kill -9 path is in test_faults_train.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CASE = textwrap.dedent("""
    import os, sys
    from pixpro_of.train.data import _OrphanQuiet
    parent = int(sys.argv[1]) if sys.argv[1] != "mine" else os.getppid()
    hook = _OrphanQuiet(parent, sys.excepthook, wait_s=0.2)
    try:
        raise {error}("peer went away")
    except BaseException:
        hook(*sys.exc_info())
    print("went on")
""")


@pytest.mark.parametrize(
    "error,parent,rc,says",
    [
        ("ConnectionResetError", "999999999", 1, ""),  # the parent is gone: end quietly
        ("EOFError", "999999999", 1, ""),
        ("ConnectionResetError", "mine", 0, "ConnectionResetError: peer went away"),  # parent alive: report it
        ("ValueError", "999999999", 0, "ValueError: peer went away"),  # not a lost connection: report it
    ],
)
def test_orphan_hook(error, parent, rc, says):
    out = subprocess.run(
        [sys.executable, "-c", CASE.format(error=error), parent], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == rc, out.stderr
    if says:
        assert says in out.stderr and "Traceback" in out.stderr and out.stdout == "went on\n"
    else:
        assert out.stderr == "" and out.stdout == ""
