"""``launcher submit``: render the job script into a new run directory and submit it.

``launcher render`` (or ``submit --dry-run``) runs the same checks without writing or submitting
anything (:func:`prepare`). With ``--chain N`` the first N links are submitted at once, each
waiting for the previous one (``afterany``); later links are added by the jobs themselves while
the run needs them. A submit that fails before any job was queued removes the run directory it
created, so the same command can simply be run again.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, List, Optional, Sequence

import click

from launcher import smoke
from launcher.job_files import RunDir
from launcher.job_script import render_script
from launcher.options import PASSTHROUGH, TRAINER_ARGS_HELP, build_request, job_options
from launcher.request import JobPlan, check_trainer_config, plan_job
from launcher.schedulers import Scheduler, get_scheduler
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError


@dataclass(frozen=True)
class Prepared:
    plan: JobPlan
    scheduler: Scheduler
    script: str

    @property
    def script_path(self) -> str:
        return str(RunDir(self.plan.run_dir).script)

    def link_argv(self, link: int, after: Optional[str], needs: Sequence[str] = ()) -> List[str]:
        return self.scheduler.submit_argv(self.plan, self.script_path, link, after, needs)


def prepare(args: Any, extra: Sequence[str]) -> Prepared:
    """Check a request (resource math, then the trainer's own config check) and render its job script.

    ``args.smoke``: the request's five-minute self-check instead (:mod:`launcher.smoke`)."""
    req = build_request(args, extra)
    if getattr(args, "smoke", False):
        plan = smoke.plan_smoke(req)
    else:
        plan = plan_job(req)
        check_trainer_config(plan)
    sched = get_scheduler(req.scheduler)
    return Prepared(plan, sched, render_script(plan, sched, args.template_dir))


def request_record(plan: JobPlan, args: Any, extra: Sequence[str]) -> dict:
    req = plan.request
    rec = {k: v for k, v in dataclasses.asdict(req).items() if k != "profile"}
    rec["profile"] = req.profile.name
    rec["profile_source"] = req.profile.source
    rec["nodes"] = plan.nodes
    rec["ranks_per_node"] = plan.ranks_per_node
    rec["walltime_s"] = plan.walltime_s
    rec["cwd"] = os.getcwd()
    return rec


def run_submit(argv: List[str], cwd: str) -> str:
    """Run one submit command; its stdout (the job id line). Failures are UserErrors."""
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UserError(f"{argv[0]}: command not found (is this a login node of the cluster?)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{argv[0]}: no answer in 120 s") from None
    if proc.returncode != 0:
        msg = " ".join((proc.stderr or proc.stdout).split())[:300]
        raise UserError(f"{shlex.join(argv)} failed (exit {proc.returncode}): {msg}")
    return proc.stdout


_local_jobs = itertools.count(1)  # one id per job this process starts (a pipeline starts several)


def start_local(rd: RunDir, argv: List[str], link: int, wait: bool) -> tuple:
    """Start the local runner (detached unless ``wait``); returns (job id, exit code or None)."""
    job_id = f"local-{os.getpid()}{next(_local_jobs):02d}{link:03d}"
    full = argv[:3] + ["--job-id", job_id] + argv[3:]
    rd.record_submit(full)
    rd.record_job("submit", link, job_id, job_id)
    log = open(rd.logs / "local-runner.log", "a")
    if wait:
        rc = subprocess.call(full, cwd=str(rd.path), stdout=log, stderr=subprocess.STDOUT)
        return job_id, rc
    subprocess.Popen(
        full, cwd=str(rd.path), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    return job_id, None


def submit_links(
    prep: Prepared,
    rd: RunDir,
    first_link: int,
    count: int,
    kind: str,
    wait: bool = False,
    needs: Sequence[str] = (),
    quiet: bool = False,
) -> int:
    """Submit ``count`` links starting at ``first_link``, each depending on the one before (the first
    on the jobs of ``needs``, an earlier pipeline stage's: run directories for the local runner)."""
    after = None
    for i in range(first_link, first_link + count):
        argv = prep.link_argv(i, after, needs if i == first_link else ())
        if prep.scheduler.name == "local":
            job_id, rc = start_local(rd, argv, i, wait)
            print(f"launcher: started {job_id} (run {rd.path})", file=sys.stderr)
            if rc is not None:
                return rc
            continue
        rd.record_submit(argv)
        out = run_submit(argv, str(rd.path))
        job_id = prep.scheduler.parse_job_id(out)
        rd.record_job(kind if i == first_link else "chain", i, job_id, out)
        if not quiet:
            print(f"launcher: submitted {job_id} (link {i}, run {rd.path})", file=sys.stderr)
            print(job_id)
        after = prep.scheduler.chain_dependency_id(job_id)
    return 0


@cli_command(
    "submit",
    context_settings=PASSTHROUGH,
    epilog="Examples: launcher submit --scheduler pbs --cluster abci3 --gpus 32 --frames 6 --group gXXXX "
    "--data shards/manifest.json --chain 3; "
    "launcher submit --scheduler slurm --stage flow --data shards/ --model dis --gpus 0; "
    "launcher submit --gpus 0 --preset cpu_small --wait; "
    "launcher submit --smoke --gpus 0 --preset cpu_small --wait. " + TRAINER_ARGS_HELP,
)
@job_options
@click.option(
    "--smoke",
    is_flag=True,
    help="instead of the run: its five-minute self-check (same profile, script, nodes and trainer config; "
    "tiny data, 20 steps, a stop and resume) in RUN_DIR-smoke; one line per check, then "
    "'smoke: PASS' or 'smoke: FAIL: ...' (exit 0 only on PASS)",
)
@click.option("--wait", is_flag=True, help="local scheduler: run in the foreground, exit with its code")
@click.option(
    "--dry-run", is_flag=True, help="check and render only: the job script on stdout, the submit command(s) on stderr"
)
def command(trainer_args, **opts) -> int:
    """Render the job script into a new run directory and submit it (--chain N: N dependent links)."""
    args, extra = SimpleNamespace(**opts), list(trainer_args)
    prep = prepare(args, extra)
    if args.dry_run:
        print_dry_run(prep)
        return 0
    rd = RunDir(prep.plan.run_dir)
    if args.smoke and rd.exists():
        raise UserError(
            f"{rd.path} holds an earlier smoke ({rd.path / smoke.REPORT}); remove that directory to run the smoke again"
        )
    if rd.is_done():
        raise UserError(f"--run-dir {rd.path} holds a finished run (done marker); choose another --run-dir or --name")
    if rd.exists():
        raise UserError(f"--run-dir {rd.path} already holds a run; continue it with 'launcher resume {rd.path}'")
    created = not rd.path.exists()
    rd.create(prep.script, request_record(prep.plan, args, extra))
    try:
        if args.smoke:
            smoke.pack_data(prep.plan)
        rc = submit_links(prep, rd, 0, prep.plan.chain, "submit", wait=args.wait)
        if args.smoke and args.wait and prep.scheduler.name == "local":
            return smoke.report(str(rd.path), rc)
        if args.smoke:
            print(
                f"launcher: the smoke's lines go to {rd.log} and {rd.path / smoke.REPORT} (launcher logs {rd.path})",
                file=sys.stderr,
            )
        return rc
    except UserError:
        if not rd.jobs():  # nothing was queued: leave nothing behind, so a retry starts clean
            if created:
                shutil.rmtree(rd.path, ignore_errors=True)
            else:
                shutil.rmtree(rd.job, ignore_errors=True)
        raise


def main(argv: Optional[Sequence[str]] = None) -> int:
    return call(command, argv, "launcher submit")


def print_dry_run(prep: Prepared) -> None:
    """The job script on stdout and the exact submit command of each link on stderr."""
    sys.stdout.write(prep.script)
    after = None
    for link in range(prep.plan.chain):
        print(shlex.join(prep.link_argv(link, after)), file=sys.stderr)
        after = f"<job id of link {link}>"


if __name__ == "__main__":
    sys.exit(main())
