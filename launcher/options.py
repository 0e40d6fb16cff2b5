"""Options shared by ``launcher render`` and ``launcher submit``, and their JobRequest."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, Callable, List, Sequence, Tuple

import click

from launcher.clusters import DEFAULT_PROFILE, SCHEDULERS, load_profile, parse_duration
from launcher.launchers import LAUNCH_METHODS
from launcher.request import JobRequest, check_name, passthrough_args
from launcher.stages import STAGES, get_stage
from plumbing.errors import UserError

#: Settings for ``render`` and ``submit``: words they do not know go on to the trainer.
PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}

TRAINER_ARGS_HELP = (
    "Any other --option value or key=value goes to the trainer as a key=value override, "
    "e.g. optim.base_lr=0.5 or --data.num_workers 4; with another --stage, to that stage's "
    "command as written, e.g. --stage flow --model dis."
)


def job_options(f: Callable) -> Callable:
    """The options of ``launcher render`` and ``launcher submit`` (and the trainer's words after them)."""
    options = [
        click.option(
            "--scheduler",
            type=click.Choice(SCHEDULERS),
            default="local",
            show_default=True,
            help="how nodes are obtained (local: this machine)",
        ),
        click.option(
            "--cluster",
            default=None,
            help="cluster profile name or .toml path (default: the scheduler's generic profile)",
        ),
        click.option("--profile-dir", default=None, help="directory of user profiles, searched first"),
        click.option("--template-dir", default=None, help="directory of user templates, searched first"),
        click.option(
            "--stage",
            type=click.Choice(STAGES),
            default="train",
            show_default=True,
            help="which command the job runs: pack (reads --videos), flow, verify, train (read --data), "
            "convert, eval (read --from-run)",
        ),
        click.option(
            "--videos", default=None, help="pack: BDD100K folder (or its videos/ or images/) or a synth: spec"
        ),
        click.option("--from-run", default=None, help="convert, eval: the training run directory"),
        click.option(
            "--node-sets",
            type=int,
            default=1,
            show_default=True,
            help="pack: node sets to balance frames across (the nodes training will use)",
        ),
        click.option(
            "--gpus",
            type=int,
            default=None,
            help="total GPUs; 0 = CPU ranks (default: one node's GPUs; pack, verify, convert: 0; eval: 1)",
        ),
        click.option(
            "--frames",
            type=int,
            default=None,
            help="clip length k: selects the trainer preset pixpro_k<K> (with --config/--preset: data.k=K)",
        ),
        click.option("--preset", default=None, help="trainer preset by name, e.g. cpu_small"),
        click.option("--name", default=None, help="run and job name (default: pixpro-k<K>-g<GPUS>)"),
        click.option("--run-dir", default=None, help="run directory (default: runs/NAME)"),
        click.option(
            "--walltime",
            default=None,
            help="the job's time limit: HH:MM:SS, HH:MM, D-HH:MM:SS, 90s, 10m, 4h, 2d; "
            "a bare number is minutes, as in SLURM (default: the profile's)",
        ),
        click.option(
            "--chain", type=int, default=1, show_default=True, help="pre-submit N dependent jobs (each resumes the run)"
        ),
        click.option(
            "--launch",
            type=click.Choice(tuple(LAUNCH_METHODS)),
            default=None,
            help="how ranks start (default: the profile's)",
        ),
        click.option("--backend", type=click.Choice(("horovod", "ddp")), default=None),
        click.option(
            "--trainer-command",
            default=None,
            help="command that replaces 'PYTHON -m pixpro_of train' (custom entry point)",
        ),
        click.option("--config", default=None, help="trainer config file passed as --config"),
        click.option(
            "--data",
            default=None,
            help="shard manifest (or the folder holding its manifest.json, from 'hdf5_tools pack') "
            "to stage to node-local disk at job start; needed unless the trainer config "
            "names its shards or uses the synthetic world",
        ),
        click.option(
            "--data-key",
            default="data.shards",
            show_default=True,
            help="trainer key that receives [STAGED_DIR/manifest.json]",
        ),
        click.option("--global-batch", type=int, default=None, help="global batch; must divide over the ranks"),
        click.option(
            "--batch-key",
            default="data.batch_size",
            show_default=True,
            help="trainer key that receives the global batch",
        ),
        click.option("--nodes", type=int, default=None, help="CPU runs only: number of nodes"),
        click.option("--ranks-per-node", type=int, default=None, help="CPU runs only: ranks per node"),
        click.option("--group", default="", help="group/project/account to charge"),
        click.option("--queue", default=None, help="queue/partition/resource group (default: the profile's)"),
        click.option(
            "--python",
            default=None,
            help="python on the compute nodes (default: the profile's, else this interpreter, whose "
            "venv/conda environment the job activates)",
        ),
        click.option(
            "--cpus-per-rank",
            type=int,
            default=None,
            help="CPU cores per rank (SLURM --cpus-per-task; default: the profile's share of a node)",
        ),
        click.option("--max-timeouts", type=int, default=None, help="resumes after walltime/deadline stops"),
        click.option("--max-preemptions", type=int, default=None, help="resumes after preemptions"),
        click.option(
            "--mail",
            default=None,
            help="address for the scheduler's own mail when each job ends or fails (default: the "
            "profile's mail; '' = none)",
        ),
        click.option(
            "--notify",
            default=None,
            help="shell command run once when the run ends for good (done, failed, budget spent, "
            "stopped), with LAUNCHER_OUTCOME, LAUNCHER_SUMMARY and the run's paths in its "
            "environment (default: the profile's notify; '' = none)",
        ),
        click.option(
            "--allow-node-local-paths",
            is_flag=True,
            help="multi-node jobs: accept a run directory, interpreter or --data under a node-local "
            "path (/tmp, /var/tmp, /dev/shm, the profile's local directory)",
        ),
        click.argument("trainer_args", nargs=-1, type=click.UNPROCESSED, metavar="[TRAINER ARGS]..."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def parse_job_args(argv: Sequence[str]) -> Tuple[SimpleNamespace, List[str]]:
    """The job options in ``argv`` and the trainer's words, parsed as ``render`` and ``submit`` parse them."""

    @click.command(context_settings=PASSTHROUGH)
    @job_options
    def parse(trainer_args, **opts):
        return SimpleNamespace(**opts), list(trainer_args)

    return parse.main(list(argv), prog_name="launcher", standalone_mode=False)


def build_request(args: Any, extra: Sequence[str]) -> JobRequest:
    """Turn parsed options (an object with one attribute per option) and the trainer's words into a JobRequest."""
    profile = load_profile(args.cluster or DEFAULT_PROFILE[args.scheduler], args.profile_dir)
    if profile.scheduler != args.scheduler:
        raise UserError(
            f"--cluster {profile.name} is a {profile.scheduler} profile, not {args.scheduler} "
            f"(add --scheduler {profile.scheduler})"
        )
    if args.scheduler == "local" and args.chain != 1:
        raise UserError("--chain is for batch schedulers; the local runner resumes the run itself")
    stage = get_stage(args.stage)
    gpus = stage.default_gpus(profile) if args.gpus is None else args.gpus
    if args.name is not None:
        name = args.name
    else:
        name = f"pixpro-k{args.frames}-g{gpus}" if args.frames else f"pixpro-g{gpus}"
        if stage.name != "train":
            name = f"{stage.name}-g{gpus}"
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
        scheduler=args.scheduler,
        profile=profile,
        gpus=gpus,
        name=name,
        run_dir=run_dir,
        frames=args.frames,
        preset=args.preset,
        walltime_s=walltime,
        chain=args.chain,
        launch_method=args.launch,
        backend=args.backend,
        trainer_command=args.trainer_command,
        trainer_config=args.config,
        data_manifest=args.data,
        passthrough=tuple(passthrough_args(extra)) if stage.name == "train" else (),
        stage=stage.name,
        videos=args.videos,
        from_run=args.from_run,
        node_sets=args.node_sets,
        data_pending=bool(getattr(args, "data_pending", False)),
        stage_args=tuple(extra) if stage.name != "train" else (),
        data_key=args.data_key,
        global_batch=args.global_batch,
        batch_key=args.batch_key,
        nodes=args.nodes,
        ranks_per_node=args.ranks_per_node,
        group=args.group,
        queue=args.queue,
        python=args.python,
        max_timeouts=args.max_timeouts,
        max_preemptions=args.max_preemptions,
        cpus_per_rank=args.cpus_per_rank,
        mail=profile.mail if args.mail is None else args.mail.strip(),
        notify=profile.notify if args.notify is None else args.notify.strip(),
        allow_node_local_paths=bool(getattr(args, "allow_node_local_paths", False)),
    )
