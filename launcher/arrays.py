"""``launcher array TASKS.json --max-running C``: many small jobs as one array job with a concurrency cap."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from launcher.job_files import RunDir, now_iso
from launcher.job_script import render_array_script, render_directives, render_script
from launcher.options import parse_job_args
from launcher.request import JobPlan, check_name, check_trainer_config, plan_job, safe_job_name
from launcher.schedulers import Scheduler, get_scheduler
from plumbing.atomic import atomic_write_text
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError

ARRAY_SCRIPT = "array.sh"
ARRAY_RECORD = "array.json"


@dataclass(frozen=True)
class Task:
    index: int
    plan: JobPlan
    script: str  # the task's own job.sh
    record: dict  # its job/request.json


@dataclass(frozen=True)
class ArrayPlan:
    name: str
    directory: str
    scheduler: Scheduler
    cap: int  # 0 = no cap
    tasks: Tuple[Task, ...]
    script: str  # the array job's script ('' when the scheduler runs each task as a job of its own)
    template_dir: Optional[str] = None

    @property
    def script_path(self) -> str:
        return os.path.join(self.directory, ARRAY_SCRIPT)

    @property
    def as_array(self) -> bool:
        """One array job (False: the local runner's jobs, or too few tasks for the scheduler's arrays)."""
        return self.scheduler.name != "local" and len(self.tasks) >= self.scheduler.array_min_tasks

    def submit_argv(self, after: Optional[str] = None, needs: Sequence[str] = ()) -> List[str]:
        plan = dataclasses.replace(self.tasks[0].plan, run_dir=self.directory)
        return self.scheduler.array_submit_argv(plan, self.script_path, len(self.tasks), self.cap, after, needs)


def load_tasks(path: str) -> List[List[str]]:
    """Each task's ``launcher submit`` words from TASKS.json (one-line errors naming the file)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"TASKS {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"TASKS {path}: cannot read ({exc})") from None
    except ValueError as exc:
        raise UserError(f"TASKS {path}: not JSON ({exc})") from None
    common: list = []
    if isinstance(data, dict):
        common, data = data.get("common", []), data.get("tasks")
    words_ok = lambda v: isinstance(v, list) and all(isinstance(w, str) for w in v)  # noqa: E731
    if not words_ok(common):
        raise UserError(f'TASKS {path}: "common" must be a list of words')
    if not isinstance(data, list) or not data:
        raise UserError(
            f"TASKS {path}: expected a non-empty list of tasks (each a list of 'launcher submit' words), "
            f'or {{"common": [...], "tasks": [[...], ...]}}'
        )
    for i, task in enumerate(data):
        if not words_ok(task):
            raise UserError(f"TASKS {path}: task {i} is not a list of words")
    return [list(common) + list(task) for task in data]


def _task(index: int, words: Sequence[str], template_dir: Optional[str]) -> Task:
    from launcher.submit import request_record

    try:
        args, extra = parse_job_args(words)
    except click.ClickException as exc:
        raise UserError(f"task {index}: {exc.format_message()}") from None
    if template_dir and not args.template_dir:
        args.template_dir = template_dir
    try:
        from launcher.options import build_request

        plan = plan_job(build_request(args, extra))
        check_trainer_config(plan)
    except UserError as exc:
        raise UserError(f"task {index}: {exc}") from None
    if plan.chain != 1:
        raise UserError(
            f"task {index}: --chain {plan.chain}: a task of an array job is one job (it requeues or "
            f"chains itself when it must resume); leave --chain out"
        )
    sched = get_scheduler(plan.request.scheduler)
    script = render_script(plan, sched, args.template_dir, array_task=sched.name != "local")

    return Task(index, plan, script, request_record(plan, args, extra))


def plan_array(
    task_words: Sequence[Sequence[str]],
    cap: int,
    name: str = "array",
    directory: Optional[str] = None,
    template_dir: Optional[str] = None,
) -> ArrayPlan:
    """Check every task (as ``launcher submit`` would) and render each task's script and the array's."""
    check_name(name)
    if cap < 0:
        raise UserError(f"--max-running {cap}: must be 0 (no cap) or more")
    tasks = tuple(_task(i, words, template_dir) for i, words in enumerate(task_words))
    first = tasks[0].plan
    sched = get_scheduler(first.request.scheduler)
    seen: Dict[Any, Any] = {}
    for t in tasks:
        p = t.plan
        if p.request.scheduler != sched.name or p.profile.name != first.profile.name:
            raise UserError(
                f"task {t.index}: --scheduler {p.request.scheduler} --cluster {p.profile.name} differs from "
                f"task 0's ({sched.name}, {first.profile.name}); an array job runs on one cluster"
            )
        if p.run_dir in seen:
            raise UserError(f"task {t.index}: --run-dir {p.run_dir} is task {seen[p.run_dir]}'s too; give each its own")
        seen[p.run_dir] = t.index
    directory = os.path.abspath(directory or os.path.join("runs", name))
    if directory in seen:
        raise UserError(f"--dir {directory} is task {seen[directory]}'s run directory; give the array its own")
    script = ""
    if sched.name != "local":
        directives = [
            render_directives(dataclasses.replace(t.plan, name=safe_job_name(name)), sched, template_dir) for t in tasks
        ]
        for t, text in zip(tasks, directives):
            if text != directives[0]:
                mine, theirs = next(
                    (a, b) for a, b in zip(text.splitlines() + [""], directives[0].splitlines() + [""]) if a != b
                )
                raise UserError(
                    f"task {t.index}: its resources differ from task 0's ({mine or '(none)'!r} vs "
                    f"{theirs or '(none)'!r}); an array job asks for one set of resources for every task"
                )
        script = render_array_script(
            sched,
            directives[0],
            dict(
                name=safe_job_name(name),
                tasks=[t.plan.run_dir for t in tasks],
                cap=cap,
                index_var=sched.array_index_var,
                index_base=sched.array_index_base,
                id_var=sched.array_id_var,
            ),
            template_dir,
        )
    return ArrayPlan(name, directory, sched, cap, tasks, script, template_dir)


# ----------------------------------------------------------------------------- submitting


def _create_tasks(ap: ArrayPlan) -> List[RunDir]:
    made = []
    for t in ap.tasks:
        rd = RunDir(t.plan.run_dir)
        if rd.is_done():
            raise UserError(
                f"task {t.index}: --run-dir {rd.path} holds a finished run (done marker); leave the task out"
            )
        if rd.exists():
            raise UserError(
                f"task {t.index}: --run-dir {rd.path} already holds a run; continue it with "
                f"'launcher resume {rd.path}' or leave the task out"
            )
    for t in ap.tasks:
        rd = RunDir(t.plan.run_dir)
        rd.create(t.script, dict(t.record, array=ap.directory, array_index=t.index))
        made.append(rd)
    return made


def _write_record(ap: ArrayPlan, **extra) -> None:
    atomic_write_text(
        Path(ap.directory) / ARRAY_RECORD,
        json.dumps(
            dict(
                name=ap.name,
                scheduler=ap.scheduler.name,
                max_running=ap.cap,
                tasks=[t.plan.run_dir for t in ap.tasks],
                **extra,
            ),
            indent=1,
        )
        + "\n",
    )


def submit_array(
    ap: ArrayPlan, after: Optional[str] = None, needs: Sequence[str] = (), wait: bool = False, quiet: bool = False
) -> Tuple[str, int]:
    """Create the tasks' run directories and the array's, and submit; (the array job's id, exit code).

    ``after``: a job the array waits for whatever its end (afterany); ``needs``: jobs it waits for
    only when they succeed (afterok). The local scheduler: one runner per task sharing the cap's
    slots; ``wait`` waits for every task (exit code: the first non-zero one)."""
    from launcher.submit import run_submit

    root = Path(ap.directory)
    if (root / ARRAY_RECORD).exists():
        raise UserError(f"--dir {root} already holds an array job ({ARRAY_RECORD}); choose another --dir or --name")
    made: List[RunDir] = []
    try:
        (root / "logs").mkdir(parents=True, exist_ok=True)
        made = _create_tasks(ap)
        if ap.scheduler.name == "local":
            return _start_local(ap, made, needs, wait, quiet)
        if not ap.as_array:  # too few tasks for this scheduler's arrays: the one task as a job of its own
            from launcher.submit import Prepared, submit_links

            t = ap.tasks[0]
            submit_links(Prepared(t.plan, ap.scheduler, t.script), made[0], 0, 1, "submit", needs=needs, quiet=quiet)
            job_id = made[0].jobs()[-1].job_id
            _write_record(ap, job_id=job_id, array=False)
            return job_id, 0
        atomic_write_text(Path(ap.script_path), ap.script, chmod=0o755)
        argv = ap.submit_argv(after, needs)
        with open(root / "submit.txt", "a") as f:
            f.write(f"{now_iso()}\t{shlex.join(argv)}\n")
        out = run_submit(argv, str(root))
    except (UserError, OSError) as exc:
        for rd in made:  # nothing was queued: leave nothing behind, so the same command can run again
            shutil.rmtree(rd.path, ignore_errors=True)
        shutil.rmtree(root / "logs", ignore_errors=True)
        if isinstance(exc, OSError):
            raise UserError(f"--dir {root}: {exc.strerror or exc}") from None
        raise
    array_id = ap.scheduler.parse_array_id(out)
    for t, rd in zip(ap.tasks, made):
        rd.record_submit(argv)
        rd.record_job("submit", 0, ap.scheduler.array_task_id(array_id, t.index), out)
    _write_record(ap, job_id=array_id, array=True)
    if not quiet:
        print(
            f"launcher: submitted array {array_id}: {len(ap.tasks)} task(s), "
            f"{'at most ' + str(ap.cap) if ap.cap else 'no cap on how many'} running at once ({ap.directory})",
            file=sys.stderr,
        )
        print(array_id)
    return array_id, 0


def _start_local(ap: ArrayPlan, made: List[RunDir], needs: Sequence[str], wait: bool, quiet: bool) -> Tuple[str, int]:
    slot_dir = Path(ap.directory) / "slots"
    slot_dir.mkdir(parents=True, exist_ok=True)
    array_id = f"local-{os.getpid()}"
    procs = []
    for t, rd in zip(ap.tasks, made):
        job_id = f"{array_id}_{t.index}"
        argv = ap.scheduler.submit_argv(t.plan, str(rd.script), 0, None, needs)
        argv = argv[:3] + ["--job-id", job_id, "--slots", str(ap.cap), "--slot-dir", str(slot_dir)] + argv[3:]
        rd.record_submit(argv)
        rd.record_job("submit", 0, job_id, job_id)
        log = open(rd.logs / "local-runner.log", "a")
        procs.append(
            subprocess.Popen(
                argv,
                cwd=str(rd.path),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=not wait,
            )
        )
        log.close()
    _write_record(ap, job_id=array_id, array=True)
    if not quiet:
        print(
            f"launcher: started {len(procs)} local task(s) {array_id}_0..{len(procs) - 1}, at most "
            f"{ap.cap or len(procs)} at once ({ap.directory})",
            file=sys.stderr,
        )
    rc = 0
    if wait:
        for p in procs:
            code = p.wait()
            rc = rc or code
    return array_id, rc


def print_dry_run(ap: ArrayPlan, after: Optional[str] = None, needs: Sequence[str] = ()) -> None:
    """The array's script on stdout; its submit command and each task's run directory on stderr."""
    if ap.scheduler.name == "local":
        print(
            f"# local: {len(ap.tasks)} runner(s) sharing {ap.cap or len(ap.tasks)} slot(s) in "
            f"{Path(ap.directory) / 'slots'}",
            file=sys.stderr,
        )
    elif not ap.as_array:
        sys.stdout.write(ap.tasks[0].script)
        print(
            shlex.join(
                ap.scheduler.submit_argv(ap.tasks[0].plan, str(RunDir(ap.tasks[0].plan.run_dir).script), 0, None, needs)
            ),
            file=sys.stderr,
        )
    else:
        argv = ap.submit_argv(after, needs)  # refusals (PJM's cap) before anything is printed
        sys.stdout.write(ap.script)
        print(shlex.join(argv), file=sys.stderr)
    for t in ap.tasks:
        print(
            f"# task {t.index}: {t.plan.run_dir} ({t.plan.stage.name}, {t.plan.nodes} node(s) x "
            f"{t.plan.ranks_per_node} rank(s), {t.plan.gpus_per_node} GPU(s) per node)",
            file=sys.stderr,
        )


@cli_command(
    "array",
    epilog='TASKS.json: {"common": [WORDS...], "tasks": [[WORDS...], ...]}, each task\'s '
    "'launcher submit' words after the common ones, e.g. --stage eval --from-run runs/k6-s0 "
    "--run-dir runs/eval-s0; every task must ask for the same resources.",
)
@click.argument("tasks_file", metavar="TASKS.json")
@click.option(
    "--max-running", type=int, default=0, show_default=True, help="at most C tasks running at once (0: no cap)"
)
@click.option("--name", default="array", show_default=True, help="the array job's name")
@click.option("--dir", "directory", default=None, help="the array's directory (default: runs/NAME)")
@click.option("--template-dir", default=None, help="directory of user templates, searched first")
@click.option("--after", default=None, help="job id the array waits for, however it ends (afterany)")
@click.option("--needs", multiple=True, help="job id the array waits for to succeed (afterok; repeatable)")
@click.option("--wait", is_flag=True, help="local scheduler: wait for every task, exit with the first non-zero code")
@click.option(
    "--dry-run",
    is_flag=True,
    help="check and render only: the array script on stdout, the submit command and the tasks on stderr",
)
def command(tasks_file, max_running, name, directory, template_dir, after, needs, wait, dry_run) -> int:
    """Submit many small jobs (each a 'launcher submit' of its own) as one array job with a concurrency cap."""
    ap = plan_array(load_tasks(tasks_file), max_running, name, directory, template_dir)
    if dry_run:
        print_dry_run(ap, after, needs)
        return 0
    _, rc = submit_array(ap, after, needs, wait=wait)
    return rc


def main(argv: Optional[Sequence[str]] = None) -> int:
    return call(command, argv, "launcher array")


if __name__ == "__main__":
    sys.exit(main())
