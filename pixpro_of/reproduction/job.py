"""An evaluation as a launcher run:
``launcher submit --trainer-command "PYTHON -m pixpro_of.reproduction.job eval ..."``.

The launcher starts its "trainer" as ``TRAINER_COMMAND --run-dir DIR --deadline ISO key=value ...``
(it knows the trainer only by its command line and exit codes, ARCHITECTURE.md "Runs"). This
entry point takes those words off the end, runs ``python -m pixpro_of WORDS...`` (an ``eval``
command whose ``--out`` is the run directory) in this process, and writes the run's ``done``
marker when it succeeded and left ``scores.json``, so ``launcher status`` and a rerun of
``reproduce`` both see a finished run. Its exit code is the command's (0, or a failure: the
launcher never re-runs it; there is nothing to resume). ``key=value`` words are the launcher's
trainer overrides (``dist.backend=...``); an evaluation has no use for them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from plumbing.atomic import atomic_write_text
from plumbing.runs import RunLayout

_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def split_launcher_words(argv: Sequence[str]) -> Tuple[List[str], Optional[str]]:
    """(the command's own words, the run directory) from ``WORDS... --run-dir DIR --deadline ISO k=v...``."""
    words = list(argv)
    run_dir = None
    out: List[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("--run-dir", "--deadline") and i + 1 < len(words):
            if w == "--run-dir":
                run_dir = words[i + 1]
            i += 2
            continue
        if _OVERRIDE.match(w):
            i += 1
            continue
        out.append(w)
        i += 1
    return out, run_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pixpro_of.__main__ import main as pixpro_main

    words, run_dir = split_launcher_words(sys.argv[1:] if argv is None else argv)
    rc = pixpro_main(words)
    if rc == 0 and run_dir is not None:
        layout = RunLayout(run_dir)
        if (Path(run_dir) / "scores.json").is_file():
            atomic_write_text(layout.done, "evaluation finished: scores.json\n")
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
