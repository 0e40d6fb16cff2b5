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
from typing import ClassVar, Dict, List, Optional, Sequence

from launcher.shellwords import var
from plumbing.errors import UserError

LINK = var("LAUNCHER_NEXT_LINK")
AFTER = var("LAUNCHER_AFTER")


@dataclass(frozen=True)
class Scheduler(abc.ABC):
    """Base: one batch system. ``template`` is the job-script template it renders, ``cancel_exe`` the command
    that cancels its jobs (each scheduler's submit command is in its :meth:`submit_argv`)."""

    name: str
    template: str
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

    # -- array jobs (launcher.arrays): one job, N tasks, at most ``cap`` running at once ----------
    #: The variable holding a task's index in the job, the index of the first task, and the variable
    #: holding the job's id (anything from a ``[`` on is cut off).
    array_index_var: ClassVar[str] = ""
    array_index_base: ClassVar[int] = 0
    array_id_var: ClassVar[str] = ""
    #: The fewest tasks an array job may have (fewer: the task is submitted as a plain job).
    array_min_tasks: ClassVar[int] = 1

    def array_submit_argv(
        self, plan, script: str, tasks: int, cap: int, after: Optional[str] = None, needs: Sequence[str] = ()
    ) -> List[str]:
        """The command line that submits ``script`` as an array job of ``tasks`` tasks, at most ``cap``
        running at once (0 = no cap); ``plan.run_dir`` is the array's directory."""
        raise UserError(f"--scheduler {self.name}: array jobs are not supported")

    def array_task_id(self, array_id: str, index: int) -> str:
        """The scheduler's id of task ``index`` (0-based) of array job ``array_id``."""
        return f"{array_id}_{index}"

    def parse_array_id(self, output: str) -> str:
        """The array job's id in the submit command's output."""
        return self.parse_job_id(output)


def _first_match(pattern: str, output: str, what: str) -> str:
    m = re.search(pattern, output, re.MULTILINE)
    if not m:
        raise UserError(f"{what}: could not find a job id in its output: {output.strip()[:200]!r}")
    return m.group(1)


class Slurm(Scheduler):
    STATES = {
        "PENDING": "queued",
        "CONFIGURING": "queued",
        "REQUEUED": "queued",
        "REQUEUE_HOLD": "held",
        "REQUEUE_FED": "queued",
        "RUNNING": "running",
        "COMPLETING": "running",
        "SUSPENDED": "held",
        "STOPPED": "held",
        "RESIZING": "running",
        "SIGNALING": "running",
        "STAGE_OUT": "running",
        "COMPLETED": "finished",
        "CANCELLED": "cancelled",
        "FAILED": "failed",
        "TIMEOUT": "timeout",
        "PREEMPTED": "preempted",
        "NODE_FAIL": "failed",
        "BOOT_FAIL": "failed",
        "DEADLINE": "timeout",
        "OUT_OF_MEMORY": "failed",
        "SPECIAL_EXIT": "held",
    }

    def submit_argv(self, plan, script, link, after, needs=()):
        # --output is a filename pattern: a literal % in the run directory is written %%.
        out = plan.run_dir.replace("%", "%%")
        argv = [
            "sbatch",
            "--parsable",
            f"--chdir={plan.run_dir}",
            f"--output={out}/logs/slurm-%j.out",
            f"--export=ALL,LAUNCHER_LINK={link}",
        ]
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

    array_index_var = "SLURM_ARRAY_TASK_ID"
    array_id_var = "SLURM_ARRAY_JOB_ID"

    def array_submit_argv(self, plan, script, tasks, cap, after=None, needs=()):
        argv = self.submit_argv(plan, script, 0, after, needs)[:-1]
        argv = [a.replace("slurm-%j.out", "slurm-%A_%a.out") for a in argv]
        return argv + [f"--array=0-{tasks - 1}" + (f"%{cap}" if cap else ""), script]

    def parse_job_id(self, output):
        return _first_match(r"^\s*(?:Submitted batch job\s+)?(\d+)(?:;\S*)?\s*$", output, "sbatch")

    def status_argv(self, ids):
        # --array: one line per task of an array job (pending tasks are otherwise one line, 12_[3-9%2])
        return [
            "squeue",
            "--noheader",
            "--states=all",
            "--format=%i|%T|%r",
            *(["--array"] if any("_" in i for i in ids) else []),
        ]

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
    STATES = {
        "Q": "queued",
        "W": "queued",
        "T": "queued",
        "H": "held",
        "S": "held",
        "U": "held",
        "R": "running",
        "E": "running",
        "B": "running",
        "X": "finished",
        "F": "finished",
        "M": "queued",
    }

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
        return _first_match(r"^\s*(\d+(?:\[\d*\])?(?:\.\S+)?)\s*$", output, "qsub")

    array_index_var = "PBS_ARRAY_INDEX"
    array_id_var = "PBS_JOBID"
    array_min_tasks = 2  # qsub -J needs a range of at least two indices

    def array_submit_argv(self, plan, script, tasks, cap, after=None, needs=()):
        # PBS has no cap in -J itself; max_run_subjobs (OpenPBS 20, PBS Professional 2020.1 and later)
        # is the server's limit of running subjobs. Older servers refuse it: give --max-running 0 there.
        argv = self.submit_argv(plan, script, 0, after, needs)[:-1] + ["-J", f"0-{tasks - 1}"]
        if cap:
            for i, a in enumerate(argv):
                if a.startswith("depend="):  # one -W with every attribute
                    argv[i] = f"{a},max_run_subjobs={cap}"
                    break
            else:
                argv += ["-W", f"max_run_subjobs={cap}"]
        return argv + [script]

    def array_task_id(self, array_id, index):
        return array_id.replace("[]", f"[{index}]", 1)

    def status_argv(self, ids):
        return ["qstat", "-x", *(["-t"] if any("[" in i for i in ids) else []), *ids]

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
        return _first_match(r"^\s*(?:Your job(?:-array)?\s+)?(\d+)\b", output, "qsub")

    array_index_var = "SGE_TASK_ID"
    array_index_base = 1
    array_id_var = "JOB_ID"

    def array_submit_argv(self, plan, script, tasks, cap, after=None, needs=()):
        argv = self.submit_argv(plan, script, 0, after, needs)[:-1] + ["-t", f"1-{tasks}"]
        return argv + (["-tc", str(cap)] if cap else []) + [script]

    def array_task_id(self, array_id, index):
        return f"{array_id}.{index + 1}"  # qdel and qstat -j take JOB.TASK

    def status_argv(self, ids):
        return ["qstat"]

    @staticmethod
    def _task_range(text: str) -> List[int]:
        """The task numbers of qstat's ja-task-ID column: ``3``, ``1-5:2``, ``2,4-6:1``."""
        out: List[int] = []
        for part in text.split(","):
            m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
            if m:
                lo, hi, step = int(m.group(1)), int(m.group(2) or m.group(1)), int(m.group(3) or 1)
                out += list(range(lo, hi + 1, max(1, step)))
        return out

    def parse_status(self, output, ids):
        found = {}
        tasks = {i: i.split(".", 1) for i in ids if "." in i}
        for line in output.splitlines():
            parts = line.split()
            if len(parts) < 5 or not parts[0].isdigit():
                continue
            names = [parts[0]] if parts[0] in ids else []
            if len(parts) >= 9:  # an array job's line ends with its task number(s)
                numbers = self._task_range(parts[-1])
                names += [i for i, (jid, t) in tasks.items() if jid == parts[0] and t.isdigit() and int(t) in numbers]
            for name in names:
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
                found[name] = f"{word} ({st})"
        return found


class PJM(Scheduler):
    STATES = {
        "ACC": "queued",
        "QUE": "queued",
        "RNA": "queued",
        "RNP": "running",
        "RUN": "running",
        "RNE": "running",
        "RNO": "running",
        "SWO": "held",
        "SWD": "held",
        "HLD": "held",
        "EXT": "finished",
        "CCL": "cancelled",
        "ERR": "error",
        "RJT": "rejected",
    }

    def submit_argv(self, plan, script, link, after, needs=()):
        argv = ["pjsub", "--step", "-x", f"LAUNCHER_LINK={link}", "-o", f"{plan.run_dir}/logs/pjm.out"]
        if after or needs:  # a sub job of a step job starts after the sub job before it
            argv += ["--sparam", f"jid={after or self.chain_dependency_id(needs[-1])}"]
        return argv + [script]

    def parse_job_id(self, output):
        return _first_match(r"Job\s+(\d+(?:_\d+)?)\s+submitted", output, "pjsub")

    def chain_dependency_id(self, job_id):
        return job_id.split("_")[0]  # step job id: every sub job joins it

    array_index_var = "PJM_BULKNUM"
    array_id_var = "PJM_JOBID"

    def array_submit_argv(self, plan, script, tasks, cap, after=None, needs=()):
        if cap and cap < tasks:
            raise UserError(
                f"--max-running {cap}: PJM bulk jobs have no limit on running sub jobs; give "
                f"--max-running 0 (the resource group's own limits apply)"
            )
        if after or needs:
            raise UserError(
                "PJM bulk jobs cannot wait for another job; submit the array once the jobs it needs are done"
            )
        # each sub job's own output file (PJM names it after the sub job) in the array's directory
        return ["pjsub", "--bulk", "--sparam", f"0-{tasks - 1}", "-x", "LAUNCHER_LINK=0", script]

    def array_task_id(self, array_id, index):
        return f"{array_id}[{index}]"

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
        return [
            sys.executable,
            "-m",
            "launcher.local_runner",
            "--link",
            str(link),
            "--walltime",
            str(plan.walltime_s),
            "--lead",
            str(plan.warning_lead_s),
            "--signal",
            prof.warning_signal,
            "--state-file",
            f"{plan.run_dir}/job/local.json",
            *wait,
            script,
        ]

    def parse_job_id(self, output):
        return _first_match(r"^(local-\d+)\s*$", output, "local runner")

    def status_argv(self, ids):
        return []

    def parse_status(self, output, ids):
        return {}

    def cancel_argv(self, ids):
        return []


SCHEDULER_CLASSES = {
    "slurm": Slurm("slurm", "slurm.sh.j2", "scancel"),
    "pbs": PBSPro("pbs", "pbs.sh.j2", "qdel"),
    "sge": GridEngine("sge", "sge.sh.j2", "qdel"),
    "pjm": PJM("pjm", "pjm.sh.j2", "pjdel"),
    "local": Local("local", "local.sh.j2", ""),
}


def get_scheduler(name: str) -> Scheduler:
    try:
        return SCHEDULER_CLASSES[name]
    except KeyError:
        raise UserError(f"--scheduler {name!r}: choose from {', '.join(SCHEDULER_CLASSES)}") from None
