"""A job's policy: what one link of a run does at its start and after its command ends.

The job script (``templates/``) keeps the traps, ``wait`` and the scheduler's own requeue or
chain command; every decision is here, over :class:`launcher.job_files.RunDir`, and the script asks
for it with ``python -m launcher.outcome STEP ...``. Each step records its events in
``job/events.tsv`` (and says them on stderr, the run's log) and prints one *action* line on
stdout for the script: ``go``, ``resume`` (staging was interrupted: go straight to the outcome),
``requeue``, ``extend LINK AFTER`` or ``exit CODE CLEANUP_S`` (:class:`Decision`).

The link's facts (job id, link number, start time, walltime, budgets, how the run resumes) come
from the ``LAUNCHER_*`` variables the script sets (:meth:`LinkContext.from_env`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence

from launcher.job_files import RunDir, now_iso
from launcher.notify import Ending
from launcher.schedulers import get_scheduler
from plumbing.atomic import atomic_write_text
from plumbing.errors import UserError
from plumbing.runs import EXIT_FINISHED, EXIT_RESUME, EXIT_USAGE

#: How a checkpointed link continues the run: the local runner re-runs the script on exit 75,
#: a SLURM job requeues itself, other batch systems keep a chain of dependent jobs.
RESUME_MODES = ("local", "requeue", "chain")
PROBE_TIMEOUT_S = 10


#: How long the job's clean-up (removing staged data on every node) may wait for the nodes;
#: shorter once a node has stopped answering (its copy went with it).
CLEANUP_S = 120
CLEANUP_NODE_DOWN_S = 10


@dataclass(frozen=True)
class Decision:
    """What the script does next: ``go``; ``resume``; ``requeue``; ``extend LINK AFTER`` (submit link
    LINK, waiting for job AFTER); ``exit CODE CLEANUP_S`` (end the job, the clean-up waiting at most
    CLEANUP_S seconds for the nodes)."""

    action: str
    arg: int = 0
    extra: str = ""

    def line(self) -> str:
        if self.action in ("go", "resume", "requeue"):
            return self.action
        return f"{self.action} {self.arg} {self.extra}".rstrip()


def exit_with(code: int, cleanup_s: int = CLEANUP_S) -> Decision:
    return Decision("exit", code, str(cleanup_s))


@dataclass(frozen=True)
class LinkContext:
    """One link of a run: who it is and the rules it runs under (times in seconds since the epoch)."""

    run_dir: str
    job_id: str
    link: int = 0
    restart: int = 0
    start: float = 0.0
    walltime_s: int = 0
    warning_lead_s: int = 0
    chain_length: int = 1
    max_timeouts: int = 20
    max_preemptions: int = 100
    resume_mode: str = "chain"
    scheduler: str = "local"
    stage: str = "train"  # launcher.stages; every stage but train has its done marker written here
    clock: Callable[[], float] = field(default=time.time, compare=False, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "LinkContext":
        def num(name: str, default: int = 0) -> int:
            text = env.get(name, "")
            try:
                return int(text) if text.strip() else default
            except ValueError:
                raise SystemExit(f"launcher outcome: error: {name}={text!r} is not a whole number") from None

        mode = env.get("LAUNCHER_RESUME_MODE", "chain")
        if mode not in RESUME_MODES:
            raise SystemExit(
                f"launcher outcome: error: LAUNCHER_RESUME_MODE={mode!r} is not one of {', '.join(RESUME_MODES)}"
            )
        if not env.get("RUN_DIR"):
            raise SystemExit("launcher outcome: error: RUN_DIR is not set (this runs inside a job script)")
        return cls(
            run_dir=env["RUN_DIR"],
            job_id=env.get("LAUNCHER_JOB_ID", "?"),
            link=num("LAUNCHER_LINK"),
            restart=num("LAUNCHER_RESTART_COUNT"),
            start=num("LAUNCHER_START"),
            walltime_s=num("LAUNCHER_WALLTIME_S"),
            warning_lead_s=num("LAUNCHER_WARNING_LEAD_S"),
            chain_length=num("LAUNCHER_CHAIN_LENGTH", 1),
            max_timeouts=num("LAUNCHER_MAX_TIMEOUTS", 20),
            max_preemptions=num("LAUNCHER_MAX_PREEMPTIONS", 100),
            resume_mode=mode,
            scheduler=env.get("LAUNCHER_SCHEDULER", "local") or "local",
            stage=env.get("LAUNCHER_STAGE", "train") or "train",
        )

    @property
    def what(self) -> str:
        """The command's name in failure lines."""
        return "trainer" if self.stage == "train" else f"{self.stage} command"


class Link:
    """The policy of one link over its run directory."""

    def __init__(self, ctx: LinkContext, say: Optional[Callable[[str], None]] = None):
        self.ctx = ctx
        self.rd = RunDir(ctx.run_dir)
        self.ending: Optional[Ending] = None  # set when this link ends the run for good (launcher.notify)
        self._say = say or (lambda text: print(f"launcher: {text}", file=sys.stderr, flush=True))

    # -- records ---------------------------------------------------------------------------
    def event(self, text: str) -> None:
        """One line in ``job/events.tsv`` (time, job id, link, text) and in the log."""
        line = "\t".join((now_iso(), self.ctx.job_id, str(self.ctx.link), " ".join(text.split("\t")))) + "\n"
        with open(self.rd.job / "events.tsv", "a") as f:
            f.write(line)
        self._say(text)

    def checkpoint_stamp(self) -> str:
        """``NAME@MTIME`` of the newest checkpoint ('' when there is none), to tell whether a link wrote one."""
        latest = self.rd.latest_checkpoint()
        if latest is None:
            return ""
        try:
            return f"{latest.name}@{latest.stat().st_mtime_ns}"
        except OSError:
            return f"{latest.name}@"

    def request(self) -> dict:
        """The run's ``job/request.json`` ({} when unreadable): a pipeline stage's ``pipeline``, ``stage``,
        ``needs_runs``."""
        try:
            return json.loads((self.rd.job / "request.json").read_text())
        except (OSError, ValueError):
            return {}

    def cancel_later_stages(self) -> None:
        """A pipeline stage that will not finish: every later stage is cancelled (not left queued forever)."""
        req = self.request()
        if not req.get("pipeline"):
            return
        from launcher.cancel import cancel_run
        from launcher.pipeline import PipelineDir

        reason = (self.rd.stopped_reason() or "").split("\n")[0]
        why = f"cancelled: stage {req.get('stage')} did not finish" + (f" ({reason})" if reason else "")
        for st in PipelineDir(req["pipeline"]).later(req.get("stage", "")):
            rd = RunDir(st.run_dir)
            if rd.is_done() or rd.stopped_reason() is not None:
                continue
            try:
                self.event(f"pipeline: stage {st.name}: {cancel_run(rd, why)}")
            except UserError as exc:  # the scheduler could not be asked: the stage's own start check stops it
                self.event(f"pipeline: stage {st.name}: marked stopped; cancelling its jobs failed ({exc})")

    def move_dependents(self, new_job: str) -> None:
        """This stage continues in job ``new_job``: the stages that wait for it wait for that job now."""
        req = self.request()
        if not req.get("pipeline"):
            return
        from launcher.pipeline import PipelineDir

        sched = get_scheduler(self.ctx.scheduler)
        for st in PipelineDir(req["pipeline"]).dependents(req.get("stage", "")):
            # the job that waits for this stage: the first link of the dependent's newest submission
            waiting = [j for j in RunDir(st.run_dir).jobs(sched.parse_job_id) if j.kind in ("submit", "resume")]
            if not waiting:
                continue
            argv = sched.retarget_argv(waiting[-1].job_id, [sched.chain_dependency_id(new_job)])
            if not argv:
                continue
            try:
                out = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
                note = f"exit {out.returncode}" + (
                    f": {' '.join((out.stderr or out.stdout).split())}" if out.returncode else ""
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                note = f"failed ({exc.__class__.__name__})"
            self.event(f"pipeline: stage {st.name} now waits for {new_job} ({argv[0]} {note})")

    def tell(self) -> None:
        """The run ended for good in this link: run its notify command, once per run (:mod:`launcher.notify`)."""
        from launcher import notify

        if self.ending is None:
            return
        req = self.request()
        later = 0
        if req.get("pipeline"):
            from launcher.pipeline import PipelineDir

            later = len(PipelineDir(req["pipeline"]).later(req.get("stage", "")))
        if not notify.tells(req, self.ending, later) or not notify.claim(self.rd.job, self.ending, now_iso()):
            return
        env = notify.notify_env(os.environ, req, str(self.rd.path), self.ending, self.ctx.job_id)
        how, _ = notify.run_command(req["notify"], env, str(self.rd.path))
        self.event(f"notify: {self.ending.outcome}: {how}")

    # -- steps -----------------------------------------------------------------------------
    def begin(self, host: str) -> Decision:
        """The link starts: go on unless the run is done or was stopped."""
        self.event(f"start restart={self.ctx.restart} host={host}")
        if self.rd.is_done():
            self.event("skip: the run is done")
            return exit_with(EXIT_FINISHED)
        reason = self.rd.stopped_reason()
        if reason is not None:
            self.event(
                f"skip: the run was stopped ({reason.splitlines()[0] if reason else ''}); "
                "'launcher resume' continues it"
            )
            return exit_with(EXIT_FINISHED)
        for need in self.request().get("needs_runs", []):
            if not RunDir(need).is_done():
                why = f"cancelled: stage {Path(need).name} did not finish"
                self.event(f"skip: {why}")
                self.rd.stop(why)
                return exit_with(1)
        return Decision("go")

    def staged(self, rc: int, signal: str, seconds: int) -> Decision:
        """Staging ended: go on, go to the outcome as a stop (a signal came), or fail the run."""
        if rc == 0:
            self.event(f"staged in {seconds} s")
            return Decision("go")
        if signal:
            return Decision("resume")
        self.event(f"fail: staging exited {rc}")
        self.rd.stop(f"staging failed (exit {rc})")
        self.ending = Ending("failed", f"staging failed (exit {rc})")
        return exit_with(rc)

    def stop_kind(self, signal: str) -> str:
        """``preemption`` for a SIGTERM well before the walltime's end, else ``timeout``."""
        c = self.ctx
        early = c.clock() < c.start + c.walltime_s - c.warning_lead_s
        return "preemption" if signal == "TERM" and early else "timeout"

    def _count(self, kind: str) -> int:
        path = self.rd.job / f"{kind}.count"
        n = self.rd.counters()[kind] + 1
        path.write_text(f"{n}\n")
        return n

    def decide(
        self, rc: int, signal: str, stamp_before: str, probe: Optional[Callable[[], List[str]]] = None
    ) -> Decision:
        """The command ended with ``rc`` (``signal``: the stop signal the job received, '' for none)."""
        c = self.ctx
        if rc not in (EXIT_FINISHED, EXIT_RESUME) and signal:
            # The scheduler signalled the job (walltime or preemption; it often signals every
            # process, and mpirun then aborts): continue from the newest valid checkpoint.
            self.event(f"interrupted by SIG{signal} (exit {rc}); resuming from the last checkpoint")
            rc = EXIT_RESUME
        if rc == EXIT_FINISHED:
            if c.stage != "train" and not self.rd.is_done():
                atomic_write_text(self.rd.done, f"{c.stage} finished in job {c.job_id}\n")
            if self.rd.is_done():
                self.event("finished")
                self.ending = Ending("done", "done")
            else:
                self.event("finished: exit 0 but no done marker")
                self.ending = Ending("failed", f"{c.what} exited 0 without its done marker")
            return exit_with(EXIT_FINISHED)
        if rc != EXIT_RESUME:
            silent = probe() if probe is not None else []
            note = f"; no answer from {' '.join(silent)} within {PROBE_TIMEOUT_S} s (node down?)" if silent else ""
            self.event(f"fail: {c.what} exited {rc}{note}")
            self.rd.stop(f"{c.what} exited {rc} in job {c.job_id}")
            self.ending = Ending("failed", f"{c.what} exited {rc}{note}")
            return exit_with(rc, CLEANUP_NODE_DOWN_S if silent else CLEANUP_S)
        reason = self.rd.stopped_reason()
        if reason is not None:
            self.event(
                f"checkpointed; the run was stopped ({reason.splitlines()[0] if reason else ''}), not continuing"
            )
            self.ending = Ending("stopped", reason.splitlines()[0] if reason else "stopped")
            return exit_with(EXIT_FINISHED)
        kind = self.stop_kind(signal)
        most = c.max_preemptions if kind == "preemption" else c.max_timeouts
        n = self._count(kind)
        if n > most:
            self.event(f"stop: {kind} budget of {most} used up")
            self.rd.stop(f"{kind} budget of {most} used up")
            self.ending = Ending("budget", f"{kind} budget of {most} used up")
            return exit_with(1)
        latest = self.rd.latest_checkpoint()
        if c.stage != "train":  # its command keeps its own progress (flow: the pairs already written)
            self.event(f"stopped to continue: {kind} {n} of {most}; the next job goes on from where {c.what} stopped")
        elif self.checkpoint_stamp() not in ("", stamp_before):
            self.event(f"checkpointed: {kind} {n} of {most} ({latest.name if latest else 'the start'})")
        else:
            self.event(
                f"stopped without a new checkpoint: {kind} {n} of {most}; the next job resumes from "
                f"{latest.name if latest else 'the start'}"
            )
        if c.resume_mode == "local":
            return exit_with(EXIT_RESUME)
        if c.resume_mode == "requeue":
            return Decision("requeue")
        if c.link < c.chain_length - 1:
            self.event(f"chain: link {c.link + 1} is already queued")
            return exit_with(EXIT_FINISHED)
        return Decision("extend", c.link + 1, get_scheduler(c.scheduler).chain_dependency_id(c.job_id))

    def requeued(self, rc: int, output: str, signal: str) -> Decision:
        """The job's own ``scontrol requeue`` ended with ``rc``."""
        if rc == 0:
            self.event("requeued")
            return exit_with(EXIT_FINISHED)
        if signal == "TERM":
            # SLURM itself is requeueing or preempting the job (it sent SIGTERM to every process);
            # it refuses a second requeue while the first is under way.
            self.event("requeued by SLURM (preemption or scontrol requeue)")
            return exit_with(EXIT_FINISHED)
        self.event(f"scontrol requeue refused ({' '.join(output.split())}); 'launcher resume' continues the run")
        self.ending = Ending("stopped", "scontrol requeue refused; 'launcher resume' continues the run")
        return exit_with(EXIT_RESUME)

    def extended(self, rc: int, output: str, link: int) -> Decision:
        """The job submitted link ``link`` of the chain (its submit command ended with ``rc``)."""
        text = " ".join(output.split())
        if rc == 0:
            self.rd.record_job("extend", link, "", text)
            self.event(f"chain: submitted link {link}: {text}")
            try:
                new_job = get_scheduler(self.ctx.scheduler).parse_job_id(output)
            except UserError:
                new_job = ""
            if new_job:
                self.move_dependents(new_job)
            return exit_with(EXIT_FINISHED)
        self.event(f"fail: could not submit link {link}: {text}")
        self.rd.stop(f"could not submit link {link} of the chain")
        self.ending = Ending("failed", f"could not submit link {link} of the chain")
        return exit_with(1)


def silent_hosts(hostfile: str, probe_prefix: Sequence[str], timeout: float = PROBE_TIMEOUT_S) -> List[str]:
    """The hosts of ``hostfile`` that do not run ``hostname`` within ``timeout`` s (one probe each, at once).

    ``probe_prefix`` + ``[HOST, "hostname"]`` runs one process on HOST (``srun ... --nodelist``,
    ``mpirun -np 1 ... -host``). Any answer counts: the scheduler's host names need not be what
    ``hostname`` prints.
    """
    try:
        hosts = [line.split()[0] for line in Path(hostfile).read_text().splitlines() if line.split()]
    except OSError:
        return []

    def answers(host: str) -> bool:
        try:
            out = subprocess.run(
                [*probe_prefix, host, "hostname"],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return bool(out.stdout.strip())

    if not hosts or not probe_prefix:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        ok = list(pool.map(answers, hosts))
    return [h for h, good in zip(hosts, ok) if not good]


USAGE = (
    "usage: python -m launcher.outcome begin | staged RC SIGNAL SECONDS | stamp | "
    "decide RC SIGNAL STAMP [HOSTFILE PROBE...] | requeued RC SIGNAL OUTPUT | extended RC LINK OUTPUT | event TEXT"
)


def main(argv: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None) -> int:
    """The job script's entry: one step, its action on stdout. Exit 2 with one line for a usage error."""
    args = list(sys.argv[1:] if argv is None else argv)
    ctx = LinkContext.from_env(os.environ if env is None else env)
    link = Link(ctx)
    step, rest = (args[0], args[1:]) if args else ("", [])

    def need(n: int) -> None:
        if len(rest) < n:
            raise SystemExit(f"launcher outcome: error: {step or 'no step'}: {USAGE}")

    def code(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise SystemExit(f"launcher outcome: error: {step}: {text!r} is not an exit code") from None

    if step == "stamp":
        print(link.checkpoint_stamp())
        return 0
    if step == "event":  # record a line; the job goes on
        need(1)
        link.event(" ".join(rest))
        decision = Decision("go")
    elif step == "begin":
        decision = link.begin(socket.gethostname())
    elif step == "staged":
        need(3)
        decision = link.staged(code(rest[0]), rest[1], code(rest[2]))
    elif step == "decide":
        need(3)
        probe = (lambda: silent_hosts(rest[3], rest[4:])) if len(rest) > 4 else None
        decision = link.decide(code(rest[0]), rest[1], rest[2], probe)
    elif step == "requeued":
        need(3)
        decision = link.requeued(code(rest[0]), rest[2], rest[1])
    elif step == "extended":
        need(3)
        decision = link.extended(code(rest[0]), rest[2], code(rest[1]))
    else:
        print(f"launcher outcome: error: unknown step {step!r}; {USAGE}", file=sys.stderr)
        return EXIT_USAGE
    if decision.action == "exit" and decision.arg not in (
        EXIT_FINISHED,
        EXIT_RESUME if ctx.resume_mode == "local" else -1,
    ):
        link.cancel_later_stages()  # this stage ends without finishing: the stages after it cannot run
    link.tell()
    print(decision.line(), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            sys.exit(EXIT_USAGE)
        raise
