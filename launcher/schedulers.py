"""Schedulers: how a job script is submitted, chained, queried and cancelled.

Each scheduler builds argv lists (never a shell string), parses the job id its submit command
prints, and maps its queue states to a few words (``queued``, ``running``, ``held``,
``finished``). Placeholders :data:`LINK` and :data:`AFTER` in a submit argv stand for shell
variables when the command is rendered into a job script (the job extends its own chain); a
scheduler whose jobs can requeue themselves says how (:meth:`Scheduler.requeue_argv`).
"""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from plumbing.errors import UserError
from launcher.shellwords import var

LINK = var("LAUNCHER_NEXT_LINK")
AFTER = var("LAUNCHER_AFTER")


@dataclass(frozen=True)
class Scheduler(abc.ABC):
    """Base: one batch system. ``template`` is the job-script template it renders."""

    name: str
    template: str
    submit_exe: str
    cancel_exe: str

    @abc.abstractmethod
    def submit_argv(self, plan, script: str, link, after: Optional[str], needs: Sequence[str] = ()) -> List[str]:
        """The command line that submits ``script`` (link ``link``, after job ``after`` of its own chain
        whatever its exit; after every job of ``needs``, an earlier pipeline stage, only when it succeeded)."""

    def retarget_argv(self, job_id: str, needs: Sequence[str]) -> List[str]:
        """The command that makes queued job ``job_id`` wait for ``needs`` instead ([] = not possible)."""
        return []

    @abc.abstractmethod
    def parse_job_id(self, output: str) -> str:
        """The job id in the submit command's output."""

    @abc.abstractmethod
    def status_argv(self, ids: Sequence[str]) -> List[str]:
        """The command line that queries the states of ``ids``."""

    @abc.abstractmethod
    def parse_status(self, output: str, ids: Sequence[str]) -> Dict[str, str]:
        """``{job id: state}`` from the status command's output."""

    def cancel_argv(self, ids: Sequence[str]) -> List[str]:
        return [self.cancel_exe, *ids]

    def chain_dependency_id(self, job_id: str) -> str:
        """The id a successor names in its dependency."""
        return job_id

    def requeue_argv(self) -> List[str]:
        """The command a running job of this scheduler runs to requeue itself ([] = it cannot)."""
        return []


def _first_match(pattern: str, output: str, what: str) -> str:
    m = re.search(pattern, output, re.MULTILINE)
    if not m:
        raise UserError(f"{what}: could not find a job id in its output: {output.strip()[:200]!r}")
    return m.group(1)


class Slurm(Scheduler):
    STATES = {"PENDING": "queued", "CONFIGURING": "queued", "REQUEUED": "queued", "REQUEUE_HOLD": "held",
              "REQUEUE_FED": "queued", "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "held",
              "STOPPED": "held", "RESIZING": "running", "SIGNALING": "running", "STAGE_OUT": "running",
              "COMPLETED": "finished", "CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "timeout",
              "PREEMPTED": "preempted", "NODE_FAIL": "failed", "BOOT_FAIL": "failed", "DEADLINE": "timeout",
              "OUT_OF_MEMORY": "failed", "SPECIAL_EXIT": "held"}

    def submit_argv(self, plan, script, link, after, needs=()):
        # --output is a filename pattern: a literal % in the run directory is written %%.
        out = plan.run_dir.replace("%", "%%")
        argv = ["sbatch", "--parsable", f"--chdir={plan.run_dir}",
                f"--output={out}/logs/slurm-%j.out", f"--export=ALL,LAUNCHER_LINK={link}"]
        if after:
            argv.append(f"--dependency=afterany:{after}")
        elif needs:
            # a stage that cannot run any more (an earlier one failed) is cancelled, not left pending
            argv += [f"--dependency=afterok:{':'.join(needs)}", "--kill-on-invalid-dep=yes"]
        return argv + [script]

    def retarget_argv(self, job_id, needs):
        return ["scontrol", "update", f"JobId={job_id}", f"Dependency=afterok:{':'.join(needs)}"]

    def requeue_argv(self):
        return ["scontrol", "requeue", var("SLURM_JOB_ID")]

    def parse_job_id(self, output):
        return _first_match(r"^\s*(?:Submitted batch job\s+)?(\d+)(?:;\S*)?\s*$", output, "sbatch")

    def status_argv(self, ids):
        return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%r"]

    def parse_status(self, output, ids):
        found = {}
        for line in output.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 2 and parts[0] in ids:
                state = self.STATES.get(parts[1], parts[1].lower())
                reason = parts[2] if len(parts) > 2 and parts[2] not in ("None", "") else ""
                found[parts[0]] = f"{state} ({reason})" if reason else state
        return found


class PBSPro(Scheduler):
    STATES = {"Q": "queued", "W": "queued", "T": "queued", "H": "held", "S": "held", "U": "held",
              "R": "running", "E": "running", "B": "running", "X": "finished", "F": "finished", "M": "queued"}

    def submit_argv(self, plan, script, link, after, needs=()):
        argv = ["qsub", "-v", f"LAUNCHER_LINK={link}", "-o", f"{plan.run_dir}/logs/pbs.out"]
        if after:
            argv += ["-W", f"depend=afterany:{after}"]
        elif needs:  # the server deletes the job when a job it needs fails
            argv += ["-W", f"depend=afterok:{':'.join(needs)}"]
        return argv + [script]

    def retarget_argv(self, job_id, needs):
        return ["qalter", "-W", f"depend=afterok:{':'.join(needs)}", job_id]

    def parse_job_id(self, output):
        return _first_match(r"^\s*(\d+(?:\.\S+)?)\s*$", output, "qsub")

    def status_argv(self, ids):
        return ["qstat", "-x", *ids]

    def parse_status(self, output, ids):
        found = {}
        short = {i.split(".")[0]: i for i in ids}
        for line in output.splitlines():
            parts = line.split()
            if len(parts) >= 5:
                key = parts[0].split(".")[0]
                if key in short:
                    found[short[key]] = self.STATES.get(parts[4], parts[4])
        return found


class GridEngine(Scheduler):
    def submit_argv(self, plan, script, link, after, needs=()):
        argv = ["qsub", "-terse", "-v", f"LAUNCHER_LINK={link}", "-o", f"{plan.run_dir}/logs/"]
        if plan.profile.group_on_command_line and plan.group:
            argv += ["-g", plan.group]
        if after or needs:
            # Grid Engine has no afterok: a stage checks when it starts that the ones it needs are done
            argv += ["-hold_jid", after or ",".join(needs)]
        return argv + [script]

    def retarget_argv(self, job_id, needs):
        return ["qalter", "-hold_jid", ",".join(needs), job_id]

    def parse_job_id(self, output):
        return _first_match(r"^\s*(?:Your job\s+)?(\d+)\b", output, "qsub")

    def status_argv(self, ids):
        return ["qstat"]

    def parse_status(self, output, ids):
        found = {}
        for line in output.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0] in ids:
                st = parts[4]
                if "E" in st:
                    word = "error"
                elif "h" in st:
                    word = "held"
                elif "r" in st or "t" in st or "R" in st:
                    word = "running"
                elif "d" in st:
                    word = "cancelling"
                else:
                    word = "queued"
                found[parts[0]] = f"{word} ({st})"
        return found


class PJM(Scheduler):
    STATES = {"ACC": "queued", "QUE": "queued", "RNA": "queued", "RNP": "running", "RUN": "running",
              "RNE": "running", "RNO": "running", "SWO": "held", "SWD": "held", "HLD": "held",
              "EXT": "finished", "CCL": "cancelled", "ERR": "error", "RJT": "rejected"}

    def submit_argv(self, plan, script, link, after, needs=()):
        argv = ["pjsub", "--step", "-x", f"LAUNCHER_LINK={link}", "-o", f"{plan.run_dir}/logs/pjm.out"]
        if after or needs:  # a sub job of a step job starts after the sub job before it
            argv += ["--sparam", f"jid={after or self.chain_dependency_id(needs[-1])}"]
        return argv + [script]

    def parse_job_id(self, output):
        return _first_match(r"Job\s+(\d+(?:_\d+)?)\s+submitted", output, "pjsub")

    def chain_dependency_id(self, job_id):
        return job_id.split("_")[0]  # step job id: every sub job joins it

    def status_argv(self, ids):
        return ["pjstat"]

    def parse_status(self, output, ids):
        found = {}
        for line in output.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[0] in ids:
                found[parts[0]] = self.STATES.get(parts[3], parts[3])
        return found


class Local(Scheduler):
    """This machine: ``launcher.local_runner`` runs the script and re-runs it on exit 75."""

    def submit_argv(self, plan, script, link, after, needs=()):
        # needs: run directories; the runner waits for their done markers
        import sys
        prof = plan.profile
        wait = [w for d in needs for w in ("--needs", d)]
        return [sys.executable, "-m", "launcher.local_runner", "--link", str(link),
                "--walltime", str(plan.walltime_s), "--lead", str(plan.warning_lead_s),
                "--signal", prof.warning_signal, "--state-file", f"{plan.run_dir}/job/local.json", *wait, script]

    def parse_job_id(self, output):
        return _first_match(r"^(local-\d+)\s*$", output, "local runner")

    def status_argv(self, ids):
        return []

    def parse_status(self, output, ids):
        return {}

    def cancel_argv(self, ids):
        return []


SCHEDULER_CLASSES = {
    "slurm": Slurm("slurm", "slurm.sh.j2", "sbatch", "scancel"),
    "pbs": PBSPro("pbs", "pbs.sh.j2", "qsub", "qdel"),
    "sge": GridEngine("sge", "sge.sh.j2", "qsub", "qdel"),
    "pjm": PJM("pjm", "pjm.sh.j2", "pjsub", "pjdel"),
    "local": Local("local", "local.sh.j2", "", ""),
}


def get_scheduler(name: str) -> Scheduler:
    try:
        return SCHEDULER_CLASSES[name]
    except KeyError:
        raise UserError(f"--scheduler {name!r}: choose from {', '.join(SCHEDULER_CLASSES)}") from None
