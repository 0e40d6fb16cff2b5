"""``launcher pipeline``: pack -> flow -> verify -> train -> convert -> eval as dependent jobs, in one directory.

A pipeline directory holds ``pipeline.json`` (the stages in order, each with its run directory and
the stages it needs) and one run directory per stage (``pack/``, ``flow/``, ...; each a normal
launcher run: ``launcher status/logs/cancel`` work on it). Every stage is submitted at once and
waits for the ones before it with the scheduler's own dependency (SLURM ``afterok`` with
``--kill-on-invalid-dep``, PBS ``depend=afterok``, Grid Engine ``-hold_jid``, PJM step jobs; the
local runner waits for the run directories). The job's policy (:mod:`launcher.outcome`) keeps
the dependencies right while a stage runs: a stage that continues in a new chain link moves its
dependents onto that link; a stage that fails or is stopped cancels every later stage (marked
``stopped`` with the reason), and a stage that starts checks that the stages it needs are done.
``launcher resume PIPELINE`` submits again from the first unfinished stage.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence

import click

from launcher.job_files import RunDir
from launcher.options import PASSTHROUGH, job_options
from launcher.request import resolved_trainer_config
from launcher.resume import next_link
from launcher.stages import PACK_OUT
from launcher.submit import Prepared, prepare, request_record, submit_links
from plumbing.atomic import atomic_write_text
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError

PIPELINE_FILE = "pipeline.json"


@dataclass(frozen=True)
class StageEntry:
    name: str
    run_dir: str
    needs: List[str]  # names of the stages it waits for


class PipelineDir:
    """A pipeline directory: its stages in order, each a run directory."""

    def __init__(self, path: str):
        self.path = Path(path).resolve()

    @property
    def file(self) -> Path:
        return self.path / PIPELINE_FILE

    def exists(self) -> bool:
        return self.file.is_file()

    def require(self) -> "PipelineDir":
        if not self.exists():
            raise UserError(f"{self.path} is not a pipeline directory (no {PIPELINE_FILE})")
        return self

    def record(self) -> dict:
        return json.loads(self.file.read_text())

    def stages(self) -> List[StageEntry]:
        return [StageEntry(s["name"], s["run_dir"], list(s.get("needs", []))) for s in self.record()["stages"]]

    def write(self, record: dict) -> None:
        atomic_write_text(self.file, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def later(self, name: str) -> List[StageEntry]:
        """Every stage that needs ``name``, directly or through another stage."""
        out: List[StageEntry] = []
        names = {name}
        for st in self.stages():
            if names.intersection(st.needs):
                out.append(st)
                names.add(st.name)
        return out

    def dependents(self, name: str) -> List[StageEntry]:
        return [st for st in self.stages() if name in st.needs]


def stage_state(rd: RunDir) -> str:
    """``done``, ``failed: REASON``/``cancelled: REASON`` (the stop marker), ``running``, ``pending`` or
    ``not submitted``."""
    if rd.is_done():
        return "done"
    reason = rd.stopped_reason()
    if reason is not None:
        return reason if reason.startswith("cancelled") else f"failed: {reason}"
    if not rd.exists() or not rd.jobs():
        return "not submitted"
    events = rd.events()
    return "running" if events and not events[-1][3].startswith(("skip", "finished")) else "pending"


# ------------------------------------------------------------------ building the stages


def _stage_args(args: Any, **changes) -> SimpleNamespace:
    """The pipeline's options, as one stage's ``launcher submit`` options."""
    d = dict(vars(args))
    for key in (
        "flow_gpus",
        "flow_model",
        "flow_weights",
        "flow_args",
        "eval_data",
        "eval_mode",
        "eval_args",
        "dir",
        "wait",
        "dry_run",
    ):
        d.pop(key, None)
    d.update(changes)
    return SimpleNamespace(**d)


def plan_stages(args: Any, extra: Sequence[str], pipe: PipelineDir) -> List[tuple]:
    """``[(name, needs, Prepared)]`` for every stage, checked and rendered (nothing written)."""
    if args.stage != "train" or args.from_run or args.run_dir:
        raise UserError(
            "--stage, --from-run and --run-dir are chosen by 'launcher pipeline' (one run per stage "
            "under --dir); give --videos, or --data to start from packed shards"
        )
    if not args.videos and not args.data:
        raise UserError(
            "--videos: give the BDD100K folder (or a synth: spec) to pack, or --data shards/ to start "
            "from packed shards"
        )
    # what only the train stage takes; a stage that is one process runs on one node
    base = dict(chain=1, frames=None, preset=None, config=None, global_batch=None, trainer_command=None)
    one = dict(nodes=None, ranks_per_node=None, launch=None, backend=None)
    run = lambda stage: str(pipe.path / stage)  # noqa: E731
    manifest = os.path.join(run("pack"), PACK_OUT, "manifest.json") if args.videos else args.data
    train = prepare(
        _stage_args(
            args, run_dir=run("train"), name=f"{pipe.path.name}-train", data=manifest, data_pending=bool(args.videos)
        ),
        extra,
    )
    k = _clip_length(train)
    stages: List[tuple] = []
    if args.videos:
        pack = prepare(
            _stage_args(
                args,
                **base,
                stage="pack",
                gpus=0,
                **one,
                run_dir=run("pack"),
                name=f"{pipe.path.name}-pack",
                node_sets=train.plan.nodes,
                data=None,
            ),
            [],
        )
        stages.append(("pack", [], pack))
    prev = ["pack"] if args.videos else []
    if k > 1 and _reads_stored_flows(train):
        if args.flow_model != "dis" and not args.flow_weights:
            raise UserError(
                f"--flow-weights: --flow-model {args.flow_model} needs a local RAFT checkpoint (compute "
                f"nodes download nothing); give --flow-weights FILE, or --flow-model dis"
            )
        if args.flow_weights and not os.path.isfile(args.flow_weights):
            raise UserError(f"--flow-weights {args.flow_weights}: no such file")
        weights = ["--weights", os.path.abspath(args.flow_weights)] if args.flow_weights else []
        words = _words(args.flow_args, "--flow-args", ["--model", args.flow_model, *weights])
        flow = prepare(
            _stage_args(
                args,
                **base,
                stage="flow",
                gpus=args.flow_gpus if args.flow_gpus is not None else train.plan.request.gpus,
                run_dir=run("flow"),
                name=f"{pipe.path.name}-flow",
                data=manifest,
                data_pending=bool(args.videos),
            ),
            words,
        )
        stages.append(("flow", prev, flow))
        prev = ["flow"]
    verify = prepare(
        _stage_args(
            args,
            **base,
            stage="verify",
            gpus=0,
            **one,
            run_dir=run("verify"),
            name=f"{pipe.path.name}-verify",
            data=manifest,
            data_pending=bool(args.videos),
        ),
        ["--require-flows"] if k > 1 else [],
    )
    stages.append(("verify", prev, verify))
    stages.append(("train", ["verify"], train))
    convert = prepare(
        _stage_args(
            args,
            **base,
            stage="convert",
            gpus=0,
            **one,
            run_dir=run("convert"),
            name=f"{pipe.path.name}-convert",
            from_run=run("train"),
            data=None,
            data_pending=True,
        ),
        [],
    )
    stages.append(("convert", ["train"], convert))
    if args.eval_data:
        words = ["--data", os.path.abspath(args.eval_data), "--mode", args.eval_mode]
        gpus = min(1, train.plan.gpus_per_node)
        ev = prepare(
            _stage_args(
                args,
                **base,
                stage="eval",
                gpus=gpus,
                **one,
                run_dir=run("eval"),
                name=f"{pipe.path.name}-eval",
                from_run=run("train"),
                data=None,
                data_pending=True,
            ),
            _words(args.eval_args, "--eval-args", words),
        )
        stages.append(("eval", ["train"], ev))
    return stages


def _words(text: str, option: str, before: List[str]) -> List[str]:
    """``before`` and the words of an option given as one string (shell quoting)."""
    try:
        return before + shlex.split(text)
    except ValueError as exc:
        raise UserError(f"{option} {text!r}: {exc}") from None


def _printed_config(prep: Prepared) -> dict:
    return resolved_trainer_config(prep.plan)


def _clip_length(prep: Prepared) -> int:
    try:
        return int(_printed_config(prep).get("data", {}).get("k", 1))
    except (TypeError, ValueError):
        return 1


def _reads_stored_flows(prep: Prepared) -> bool:
    return str(_printed_config(prep).get("data", {}).get("flow_source", "shards")) == "shards"


# ------------------------------------------------------------------ submitting


def submit_stages(pipe: PipelineDir, stages: List[tuple], wait: bool = False, kind: str = "submit") -> int:
    """Submit ``stages`` in order, each waiting for the newest job of the stages it needs that are
    submitted here (the local runner: for their run directories' done markers)."""
    ids: Dict[str, str] = {}
    rc = 0
    for name, needs, prep in stages:
        rd = RunDir(prep.plan.run_dir)
        if prep.scheduler.name == "local":
            after = [str(pipe.path / n) for n in needs]
        else:
            after = [ids[n] for n in needs if n in ids]
        rc = submit_links(prep, rd, next_link(rd), prep.plan.chain, kind, wait=wait, needs=after, quiet=True)
        jobs = rd.jobs(prep.scheduler.parse_job_id)
        ids[name] = prep.scheduler.chain_dependency_id(jobs[-1].job_id) if jobs else ""
        print(
            f"launcher: stage {name}: {jobs[-1].job_id if jobs else '?'}"
            + (f" (after {', '.join(needs)})" if needs else ""),
            file=sys.stderr,
        )
        if wait and rc != 0:
            return rc
    return rc


def create_stage_runs(pipe: PipelineDir, stages: List[tuple], args: Any, extra: Sequence[str]) -> None:
    pipe.path.mkdir(parents=True, exist_ok=True)
    record = {
        "stages": [{"name": n, "run_dir": p.plan.run_dir, "needs": needs} for n, needs, p in stages],
        "scheduler": args.scheduler,
        "argv": sys.argv[1:],
    }
    for name, needs, prep in stages:
        rd = RunDir(prep.plan.run_dir)
        rec = request_record(prep.plan, args, extra)
        rec.update(pipeline=str(pipe.path), stage=name, needs_runs=[str(pipe.path / n) for n in needs])
        rd.create(prep.script, rec)
    pipe.write(record)


def print_pipeline_dry_run(stages: List[tuple]) -> None:
    for name, needs, prep in stages:
        print(f"# ===== stage {name} (needs {', '.join(needs) or 'nothing'}): {prep.plan.run_dir}/job/job.sh")
        sys.stdout.write(prep.script)
        after = [f"<job id of stage {n}>" for n in needs]
        if prep.scheduler.name == "local":
            after = [str(Path(prep.plan.run_dir).parent / n) for n in needs]
        print(shlex.join(prep.link_argv(0, None, after)), file=sys.stderr)
        for link in range(1, prep.plan.chain):
            print(shlex.join(prep.link_argv(link, f"<job id of {name} link {link - 1}>")), file=sys.stderr)


@cli_command(
    "pipeline",
    context_settings=PASSTHROUGH,
    epilog="Examples: launcher pipeline --scheduler pbs --cluster abci3 --gpus 16 --frames 6 "
    "--videos /data/bdd100k --group gXXXX --eval-data /data/cityscapes --flow-weights raft-small.pth "
    "--dry-run; "
    "launcher pipeline --scheduler local --gpus 0 --frames 6 --preset cpu_small "
    "--videos synth:videos=8,frames=12,size=256x128,seed=0 --flow-model dis --dir pipe --wait. "
    "Other words go to the trainer, as with 'launcher submit'.",
)
@job_options
@click.option("--dir", "dir", default=None, help="pipeline directory (default: pipelines/NAME)")
@click.option("--flow-gpus", type=int, default=None, help="GPUs for the flow stage (default: --gpus)")
@click.option(
    "--flow-model", type=click.Choice(("raft-small", "raft-large", "dis")), default="raft-small", show_default=True
)
@click.option("--flow-weights", default=None, help="local RAFT checkpoint for the flow stage")
@click.option("--flow-args", default="", help="more words for 'hdf5_tools flow', as one string (e.g. '--amp bf16')")
@click.option("--eval-data", default=None, help="Cityscapes-layout root for the eval stage (no eval stage without it)")
@click.option("--eval-mode", type=click.Choice(("deeplab", "linear")), default="deeplab", show_default=True)
@click.option("--eval-args", default="", help="more words for 'python -m pixpro_of eval seg', as one string")
@click.option("--wait", is_flag=True, help="local scheduler: run every stage in the foreground, in order")
@click.option("--dry-run", is_flag=True, help="print every stage's job script and submit command; submit nothing")
def command(trainer_args, **opts) -> int:
    """Submit pack, flow, verify, train, convert and eval as dependent jobs into one pipeline directory."""
    args, extra = SimpleNamespace(**opts), list(trainer_args)
    name = args.name or (f"pixpro-k{args.frames}-g{args.gpus}" if args.frames else "pixpro")
    pipe = PipelineDir(args.dir or os.path.join("pipelines", name))
    if pipe.exists():
        raise UserError(f"--dir {pipe.path} already holds a pipeline; continue it with 'launcher resume {pipe.path}'")
    stages = plan_stages(args, extra, pipe)
    if args.dry_run:
        print_pipeline_dry_run(stages)
        return 0
    created = not pipe.path.exists()
    create_stage_runs(pipe, stages, args, extra)
    try:
        return submit_stages(pipe, stages, wait=args.wait)
    except UserError:
        if created and not any(RunDir(p.plan.run_dir).jobs() for _, _, p in stages):
            shutil.rmtree(pipe.path, ignore_errors=True)
        raise


def main(argv: Optional[Sequence[str]] = None) -> int:
    return call(command, argv, "launcher pipeline")


if __name__ == "__main__":
    sys.exit(main())
