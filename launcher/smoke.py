"""``launcher submit --smoke``: the real run's request as a five-minute self-check job.

The smoke job has the same profile, script, nodes, ranks, launch method, backend and trainer config
(preset, ``--config``, every ``key=value``) as the run the same command would submit without
``--smoke``; it differs in what a check needs: the walltime (the profile's maximum, at most
5 minutes), one link and no resumes, its own run directory (``RUN-smoke``), and the data, a tiny
synthetic shard set packed at submit time into ``RUN-smoke/smoke_data`` (as many node sets as the
job has nodes, four steps of ``RANK_BATCH`` samples per rank on each) that the job's own staging
block copies to node-local disk. Every rank runs ``python -m pixpro_of smoke``
(:mod:`pixpro_of.smoke`); rank 0 writes the lines to the log and to ``RUN-smoke/smoke.txt``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Optional

from launcher.request import JobPlan, JobRequest, check_name, check_trainer_config, plan_job, resolved_trainer_config
from plumbing.errors import UserError

WALLTIME_S = 300  # at most 5 minutes (less where the profile's maximum is less)
RANK_BATCH = 2  # samples per rank in the smoke's 20 steps
STEPS_PER_EPOCH = 4  # the tiny set holds this many steps per node (the loader restarts each epoch)
DATA = "smoke_data"  # in the smoke's run directory; the ranks read it through data.shards
REPORT = "smoke.txt"  # written by rank 0 (pixpro_of.smoke.rank.REPORT)
SUFFIX = "-smoke"
FRAME_SIZE = "128x96"


def smoke_run_dir(req: JobRequest) -> str:
    return req.run_dir.rstrip("/") + SUFFIX


def smoke_request(req: JobRequest) -> JobRequest:
    """The real run's request (``--stage train``) as a smoke request, before its plan: one-line
    refusals for what the smoke cannot check."""
    if req.stage != "train":
        raise UserError(f"--smoke checks the training run's set-up; leave out --stage {req.stage}")
    if req.trainer_command:
        raise UserError(
            "--smoke runs the shipped trainer ('pixpro_of smoke' around 'pixpro_of train'); leave out --trainer-command"
        )
    if req.chain != 1:
        raise UserError("--smoke is one job; leave out --chain")
    name = req.name + SUFFIX
    check_name(name)
    run_dir = smoke_run_dir(req)
    return dataclasses.replace(
        req,
        stage="smoke",
        name=name,
        run_dir=run_dir,
        chain=1,
        max_timeouts=0,
        max_preemptions=0,
        walltime_s=min(req.profile.max_walltime_s, WALLTIME_S),
        data_manifest=os.path.join(run_dir, DATA, "manifest.json"),
        data_pending=True,
    )


def plan_smoke(req: JobRequest) -> JobPlan:
    """Check the real run (its resources; its ``--data`` when given; its trainer config with the
    real batch, and the GPU memory check where the profile knows the card), then plan the smoke."""
    smoke = smoke_request(req)
    real = plan_job(req)
    if req.data_manifest:
        check_trainer_config(real)
    check_trainer_config(plan_job(dataclasses.replace(req, data_manifest=smoke.data_manifest, data_pending=True)))
    smoke = dataclasses.replace(
        smoke,
        stage_args=(
            "--ranks",
            str(real.ranks),
            "--gpus-per-node",
            str(real.gpus_per_node),
            "--rank-batch",
            str(RANK_BATCH),
        ),
    )
    return plan_job(smoke)


def clip_length(plan: JobPlan) -> int:
    """The run config's clip length k (frames per clip), from the trainer's resolved config."""
    train = dataclasses.replace(plan.request, stage="train")
    cfg = resolved_trainer_config(dataclasses.replace(plan, request=train, command_argv=_train_argv(plan)))
    try:
        return max(1, int(cfg["data"]["k"]))
    except (KeyError, TypeError, ValueError):
        return 2


def _train_argv(plan: JobPlan):
    """The smoke's command with ``train`` for ``smoke`` and without the smoke's own words."""
    argv = list(plan.command_argv)
    i = argv.index("smoke")
    argv[i] = "train"
    for opt in ("--ranks", "--gpus-per-node", "--rank-batch"):
        if opt in argv:
            j = argv.index(opt)
            del argv[j : j + 2]
    return tuple(argv)


def pack_data(plan: JobPlan) -> str:
    """Pack the tiny synthetic shard set into the smoke's run directory; returns its manifest."""
    from hdf5_tools.pack import PackConfig, pack

    k = clip_length(plan)
    videos = plan.nodes * plan.ranks_per_node * RANK_BATCH * STEPS_PER_EPOCH
    out = os.path.dirname(plan.data_manifest)
    src = f"synth:videos={videos},frames={k + 1},size={FRAME_SIZE},seed=0"
    try:
        pack(PackConfig(src=src, out=out, nodes=plan.nodes, progress=False, jobs=min(8, os.cpu_count() or 1)))
    except OSError as exc:
        raise UserError(f"--smoke: cannot pack the tiny shard set into {out}: {exc}") from None
    return plan.data_manifest


def report(run_dir: str, rc: Optional[int]) -> int:
    """After a local ``--wait``: print the smoke's lines; 0 only when they end in PASS."""
    path = Path(run_dir) / REPORT
    if not path.is_file():
        log = Path(run_dir) / "logs" / "run.log"
        print(f"smoke: FAIL: the job ended (exit {rc}) before the smoke reported; see {log}")
        return rc or 1
    text = path.read_text()
    sys.stdout.write(text)
    passed = text.rstrip().splitlines()[-1].startswith("smoke: PASS")
    return 0 if passed and rc == 0 else (rc or 1)
