"""The run directory as the launcher sees it: the files of ``job/`` (the run's own layout is :mod:`plumbing.runs`).

``job/`` holds what the launcher owns: ``job.sh`` (the rendered script), ``request.json`` (the
options it was rendered from), ``submit.txt`` (each exact submit command), ``jobs.tsv`` (job-id
history: time, kind, link, job id, raw submit output), ``events.tsv`` (written by the job
script: start, staged, checkpointed, requeued, finished, failures), ``stopped`` (why the run
was stopped; links exit at once while it exists), ``timeout.count``/``preemption.count``.
``logs/run.log`` is appended by every link; ``done`` is written by the trainer.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from plumbing.atomic import atomic_write_text
from plumbing.errors import UserError
from plumbing.runs import RunLayout


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class JobRecord:
    time: str
    kind: str  # submit | chain | extend | resume
    link: str
    job_id: str
    raw: str


class RunDir(RunLayout):
    """A run directory (resolved to an absolute path) with the launcher's files in ``job/``."""

    def __init__(self, path: str):
        super().__init__(Path(path).resolve())

    @property
    def path(self) -> Path:
        return self.root

    @property
    def script(self) -> Path:
        return self.job / "job.sh"

    @property
    def log(self) -> Path:
        return self.logs / "run.log"

    def exists(self) -> bool:
        return (self.job / "request.json").is_file()

    def require(self) -> "RunDir":
        if not self.exists():
            raise UserError(f"{self.path} is not a launcher run directory (no job/request.json)")
        return self

    def stopped_reason(self) -> Optional[str]:
        p = self.job / "stopped"
        return p.read_text().strip() if p.exists() else None

    def stop(self, reason: str) -> None:
        atomic_write_text(self.job / "stopped", reason + "\n")

    def clear_stop(self) -> None:
        try:
            (self.job / "stopped").unlink()
        except FileNotFoundError:
            pass

    def create(self, script: str, request: dict) -> None:
        try:
            for sub in (self.job, self.logs, self.checkpoints):
                sub.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.script, script, chmod=0o755)
            atomic_write_text(self.job / "request.json", json.dumps(request, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise UserError(
                f"--run-dir {self.path}: cannot create the run directory "
                f"({exc.strerror or exc}{': ' + exc.filename if exc.filename else ''})"
            ) from None

    def request(self) -> dict:
        return json.loads((self.job / "request.json").read_text())

    def record_submit(self, argv: List[str]) -> None:
        with open(self.job / "submit.txt", "a") as f:
            f.write(f"{now_iso()}\t{shlex.join(argv)}\n")

    def record_job(self, kind: str, link: int, job_id: str, raw: str) -> None:
        raw1 = " ".join(raw.split())
        with open(self.job / "jobs.tsv", "a") as f:
            f.write(f"{now_iso()}\t{kind}\t{link}\t{job_id}\t{raw1}\n")

    def jobs(self, parse_id=None) -> List[JobRecord]:
        """Job-id history, oldest first; ids the job script recorded raw are parsed with ``parse_id``."""
        p = self.job / "jobs.tsv"
        out: List[JobRecord] = []
        if not p.exists():
            return out
        for line in p.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 5:
                parts += [""] * (5 - len(parts))
            t, kind, link, job_id, raw = parts[:5]
            if not job_id and parse_id is not None:
                try:
                    job_id = parse_id(raw)
                except UserError:
                    job_id = "?"
            out.append(JobRecord(t, kind, link, job_id, raw))
        return out

    def events(self) -> List[List[str]]:
        p = self.job / "events.tsv"
        if not p.exists():
            return []
        return [line.split("\t") for line in p.read_text().splitlines() if line]

    def counters(self) -> Dict[str, int]:
        out = {}
        for kind in ("timeout", "preemption"):
            p = self.job / f"{kind}.count"
            try:
                out[kind] = int(p.read_text().strip() or 0)
            except (FileNotFoundError, ValueError):
                out[kind] = 0
        return out
