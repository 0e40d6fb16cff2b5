"""``launcher list [ROOT]``: every run under ROOT (default ``runs``) in one table, pipelines with their stages.

A run is a directory with ``job/request.json``, a pipeline one with ``pipeline.json`` (its stages
follow it, indented). Each row: step/total, samples/s, ETA at the current rate
(:mod:`launcher.progress`), scheduler, newest job and state, from the files only: no scheduler is
asked (``launcher status RUN`` does that, rate-limited), so a listing of many runs stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, List, Sequence, Tuple

import click

from launcher.job_files import RunDir
from launcher.progress import eta_text, format_rate, read_progress, step_text
from launcher.schedulers import get_scheduler
from launcher.status import run_state
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError
from plumbing.runs import JOB

PIPELINE_FILE = "pipeline.json"  # launcher.pipeline.PIPELINE_FILE (not imported: it pulls in the submit path)
MAX_DEPTH = 4  #: how deep below ROOT runs and pipelines are looked for
HEADER = ("RUN", "STEP", "SAMPLES/S", "ETA", "SCHEDULER", "LAST JOB", "STATE")


def find(root: Path, max_depth: int = MAX_DEPTH) -> Iterator[Tuple[str, Path]]:
    """``("run", dir)`` and ``("pipeline", dir)`` under ``root`` (root included), sorted by path; the
    inside of a run directory is not searched."""
    found = []
    for top, dirs, files in os.walk(root):
        here = Path(top)
        depth = len(here.relative_to(root).parts)
        if PIPELINE_FILE in files:
            found.append(("pipeline", here))
        if (here / JOB / "request.json").is_file():
            found.append(("run", here))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < max_depth else []
    return iter(sorted(found, key=lambda kp: str(kp[1])))


def run_row(rd: RunDir, name: str) -> Tuple[str, ...]:
    try:
        req = json.loads((rd.job / "request.json").read_text())
    except (OSError, ValueError):
        return (name, "-", "-", "-", "?", "-", "unreadable job/request.json")
    try:
        parse_id = get_scheduler(req.get("scheduler", "")).parse_job_id
    except UserError:  # an unknown scheduler name in a hand-edited request: ids stay as recorded
        parse_id = None
    jobs = rd.jobs(parse_id)
    last = (jobs[-1].job_id or "-") if jobs else "-"
    state = run_state(rd)
    if req.get("stage", "train") == "train":
        p = read_progress(rd.path)
        step, rate, eta = step_text(p), format_rate(p.samples_per_s), eta_text(p, state.startswith("stopped"))
    else:
        step, rate, eta = "-", "-", "done" if rd.is_done() else "-"
    return (name, step, rate, eta, req.get("scheduler", "?"), last, state)


def pipeline_rows(pipe_dir: Path, name: str) -> List[Tuple[str, ...]]:
    """The pipeline's own row (the state of its first unfinished stage) and one row per stage."""
    try:
        stages = json.loads((pipe_dir / PIPELINE_FILE).read_text())["stages"]
    except (OSError, ValueError, KeyError, TypeError):
        return [(name, "-", "-", "-", "-", "-", f"unreadable {PIPELINE_FILE}")]
    rows: List[Tuple[str, ...]] = []
    summary = "done"
    for st in stages:
        rd = RunDir(st["run_dir"])
        if not rd.exists():
            rows.append((f"  {st['name']}", "-", "-", "-", "-", "-", "not submitted"))
            summary = summary if summary != "done" else f"{st['name']}: not submitted"
            continue
        row = run_row(rd, f"  {st['name']}")
        rows.append(row)
        if summary == "done" and not rd.is_done():
            summary = f"{st['name']}: {row[-1]}"
    return [(name, "-", "-", "-", "-", "-", summary)] + rows


def table(rows: Sequence[Tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER) - 1)]
    lines = []
    for r in [HEADER, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return "\n".join(lines) + "\n"


@cli_command("list", epilog="Example: launcher list runs/")
@click.argument("root", default="runs", required=False)
def command(**opts) -> int:
    """Every run under ROOT (default runs) in one table, pipelines with their stages: step/total, samples/s,
    ETA, scheduler, last job, state (from the run directories; no scheduler is asked)."""
    args = SimpleNamespace(**opts)
    root = Path(args.root)
    rows: List[Tuple[str, ...]] = []
    in_pipeline = set()
    for kind, path in find(root):
        name = str(path.relative_to(root)) if path != root else str(root)
        if kind == "pipeline":
            rows += pipeline_rows(path, name)
            try:
                in_pipeline |= {
                    str(Path(s["run_dir"]).resolve()) for s in json.loads((path / PIPELINE_FILE).read_text())["stages"]
                }
            except (OSError, ValueError, KeyError, TypeError):  # a damaged pipeline.json: its stages list as runs
                pass
        elif str(path.resolve()) not in in_pipeline:
            rows.append(run_row(RunDir(str(path)), name))
    if not rows:
        print(f"no runs under {root}", file=sys.stderr)
        return 0
    sys.stdout.write(table(rows))
    return 0


def main(argv=None) -> int:
    return call(command, argv, "launcher list")


if __name__ == "__main__":
    sys.exit(main())
