"""Options shared by ``launcher render`` and ``launcher submit``, and their JobRequest."""
from __future__ import annotations

import argparse
import os
from typing import Sequence

from plumbing.errors import UserError
from launcher.clusters import DEFAULT_PROFILE, LAUNCH_METHODS, SCHEDULERS, load_profile, parse_duration
from launcher.request import JobRequest, check_name, passthrough_args


def add_job_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--scheduler", choices=SCHEDULERS, default="local",
                    help="how nodes are obtained (default: local, this machine)")
    ap.add_argument("--cluster", default=None,
                    help="cluster profile name or .toml path (default: the scheduler's generic profile)")
    ap.add_argument("--profile-dir", default=None, help="directory of user profiles, searched first")
    ap.add_argument("--template-dir", default=None, help="directory of user templates, searched first")
    ap.add_argument("--gpus", type=int, default=None, help="total GPUs; 0 = CPU ranks (default: one node's GPUs)")
    ap.add_argument("--frames", type=int, default=None,
                    help="clip length k: selects the trainer preset pixpro_k<K> (with --config/--preset: data.k=K)")
    ap.add_argument("--preset", default=None, help="trainer preset by name, e.g. cpu_small")
    ap.add_argument("--name", default=None, help="run and job name (default: pixpro-k<K>-g<GPUS>)")
    ap.add_argument("--run-dir", default=None, help="run directory (default: runs/NAME)")
    ap.add_argument("--walltime", default=None, help="HH:MM:SS, HH:MM, D-HH:MM:SS or minutes (default: the profile's)")
    ap.add_argument("--chain", type=int, default=1, help="pre-submit N dependent jobs (each resumes the run)")
    ap.add_argument("--launch", choices=LAUNCH_METHODS, default=None, help="how ranks start (default: the profile's)")
    ap.add_argument("--backend", choices=("horovod", "ddp"), default=None)
    ap.add_argument("--trainer-command", default=None,
                    help="command that replaces 'PYTHON -m pixpro_of train' (custom entry point)")
    ap.add_argument("--config", default=None, help="trainer config file passed as --config")
    ap.add_argument("--data", default=None, help="shard manifest to stage to node-local disk at job start")
    ap.add_argument("--data-key", default="data.shards", help="trainer key that receives [STAGED_DIR/manifest.json]")
    ap.add_argument("--global-batch", type=int, default=None, help="global batch; must divide over the ranks")
    ap.add_argument("--batch-key", default="data.batch_size", help="trainer key that receives the global batch")
    ap.add_argument("--nodes", type=int, default=None, help="CPU runs only: number of nodes")
    ap.add_argument("--ranks-per-node", type=int, default=None, help="CPU runs only: ranks per node")
    ap.add_argument("--group", default="", help="group/project/account to charge")
    ap.add_argument("--queue", default=None, help="queue/partition/resource group (default: the profile's)")
    ap.add_argument("--python", default=None,
                    help="python on the compute nodes (default: the profile's, else this interpreter, whose "
                         "venv/conda environment the job activates)")
    ap.add_argument("--cpus-per-rank", type=int, default=None,
                    help="CPU cores per rank (SLURM --cpus-per-task; default: the profile's share of a node)")
    ap.add_argument("--max-timeouts", type=int, default=None, help="resumes after walltime/deadline stops")
    ap.add_argument("--max-preemptions", type=int, default=None, help="resumes after preemptions")


def build_request(args: argparse.Namespace, extra: Sequence[str]) -> JobRequest:
    """Turn parsed options (and unknown words, passed to the trainer) into a JobRequest."""
    profile = load_profile(args.cluster or DEFAULT_PROFILE[args.scheduler], args.profile_dir)
    if profile.scheduler != args.scheduler:
        raise UserError(f"--cluster {profile.name} is a {profile.scheduler} profile, not {args.scheduler} "
                        f"(add --scheduler {profile.scheduler})")
    if args.scheduler == "local" and args.chain != 1:
        raise UserError("--chain is for batch schedulers; the local runner resumes the run itself")
    gpus = profile.gpus_per_node if args.gpus is None else args.gpus
    if args.name is not None:
        name = args.name
    else:
        name = f"pixpro-k{args.frames}-g{gpus}" if args.frames else f"pixpro-g{gpus}"
    check_name(name)
    if args.run_dir is not None and not args.run_dir.strip():
        raise UserError("--run-dir: the path is empty")
    run_dir = os.path.abspath(args.run_dir or os.path.join("runs", name))
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UserError(f"--run-dir {run_dir} is a file, not a directory; choose another --run-dir or --name")
    if len(os.path.basename(run_dir).encode()) > 255:
        raise UserError(f"--run-dir: the last part of {run_dir[:60]}... is longer than a file name may be (255 bytes)")
    walltime = parse_duration(args.walltime) if args.walltime else None
    return JobRequest(
        scheduler=args.scheduler, profile=profile, gpus=gpus, name=name, run_dir=run_dir,
        frames=args.frames, preset=args.preset, walltime_s=walltime, chain=args.chain,
        launch_method=args.launch, backend=args.backend, trainer_command=args.trainer_command,
        trainer_config=args.config, passthrough=tuple(passthrough_args(extra)), data_manifest=args.data,
        data_key=args.data_key, global_batch=args.global_batch, batch_key=args.batch_key,
        nodes=args.nodes, ranks_per_node=args.ranks_per_node, group=args.group, queue=args.queue,
        python=args.python, max_timeouts=args.max_timeouts, max_preemptions=args.max_preemptions,
        cpus_per_rank=args.cpus_per_rank,
    )
