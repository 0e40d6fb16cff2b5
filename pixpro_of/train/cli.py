"""``python -m pixpro_of train --config FILE [key=value ...]``: pretrain PixPro(+flow).

Exit codes: 0 finished (``RUN_DIR/done`` written; running again exits 0 at once), 75
checkpointed and stopped early (deadline or signal), resume by running the same command again;
2 failure with a one-line error (bad input, a bad sample, a full disk, a failed rank; with more
than one rank the whole job is aborted, see :func:`fail_job`); anything else is a failure.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Sequence

import click

from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError
from plumbing.runs import EXIT_FINISHED, RunLayout

__all__ = ["command", "main"]


@cli_command(
    "train",
    epilog="Examples: python -m pixpro_of train --config pixpro_k6 --run-dir runs/k6 "
    "optim.base_lr=0.5 data.shards=[a.h5,b.h5]; python -m pixpro_of train --config cpu_small "
    "--print-config; python -m pixpro_of train --list-presets",
)
@click.option("--config", default=None, help="YAML file, or a preset name (see --list-presets)")
@click.option("--run-dir", default=None, help="run directory (created; resumed when it holds checkpoints)")
@click.option(
    "--deadline",
    default=None,
    help="stop with a checkpoint before this: a duration from now with a unit (90s, 90m, 4h, 1h30m, "
    "1-00:00:00), a clock time THH:MM, an ISO date-time or @unix (a bare number or HH:MM is "
    "refused: they were seconds and a clock time here before); overrides stop.deadline",
)
@click.option(
    "--signals",
    default=None,
    help="comma-separated stop signals by name: USR2, SIGUSR2 or usr2 (default SIGUSR2,SIGTERM,SIGINT); "
    "overrides stop.signals",
)
@click.option("--print-config", is_flag=True, help="print the resolved config as JSON and exit")
@click.option("--list-presets", is_flag=True, help="list the shipped presets and exit")
@click.option(
    "--gpu-memory-gib",
    type=float,
    default=None,
    help="refuse (exit 2, one line) when data.batch_size over --ranks GPUs of this many GiB cannot fit "
    "(estimate: pixpro_of/model/memory.py); with --print-config, the launcher's check before submitting",
)
@click.option(
    "--ranks", type=int, default=1, show_default=True, help="GPUs the batch is split over, for --gpu-memory-gib"
)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def command(config, run_dir, deadline, signals, print_config, list_presets, gpu_memory_gib, ranks, overrides) -> int:
    """Pretrain PixPro(+flow); exit 0 = finished, 75 = checkpointed (run again to resume), 2 = error.

    Config = dataclass defaults < --config file or preset < KEY=VALUE overrides (e.g.
    optim.base_lr=0.5 data.shards=[a.h5,b.h5]).
    """
    args = SimpleNamespace(
        config=config,
        run_dir=run_dir,
        deadline=deadline,
        signals=signals,
        print_config=print_config,
        list_presets=list_presets,
        overrides=overrides,
    )
    from pixpro_of.config import dump_json, list_presets, load_config
    from plumbing.parse import checked, parse_deadline, signal_name

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    overrides = list(args.overrides)
    if args.deadline is not None:
        checked(parse_deadline, args.deadline, "--deadline")  # the option's own name in a bad value's line
        overrides.append(f"stop.deadline={args.deadline}")
    if args.signals is not None:
        for name in filter(None, (n.strip() for n in args.signals.split(","))):
            checked(lambda n: signal_name(n, catchable=True), name, "--signals")
        overrides.append(f"stop.signals=[{args.signals}]")
    cfg = load_config(args.config, overrides)
    if gpu_memory_gib is not None:
        from pixpro_of.model.memory import check_fits

        est = check_fits(cfg, gpu_memory_gib, ranks)
        print(
            f"pixpro_of train: {est.rank_batch} samples per GPU need {est.summary()} of {gpu_memory_gib:g}",
            file=sys.stderr,
        )
    elif ranks != 1:
        raise UserError("--ranks is used only with --gpu-memory-gib")
    if args.print_config:
        sys.stdout.write(dump_json(cfg))  # the same bytes as the run's config.json
        return 0
    if not args.run_dir:
        raise UserError("--run-dir is required")
    run_dir = Path(args.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir}: exists and is not a directory")
    if RunLayout(run_dir).is_done():  # a resubmitted finished job: nothing to do, and fast
        print(f"pixpro_of train: {run_dir} has finished already (done marker present)", file=sys.stderr)
        return EXIT_FINISHED
    if cfg.stop.deadline is not None:
        # A duration counts from the command's start, not from when the config was first parsed.
        from pixpro_of.train.stopping import parse_deadline

        cfg.stop.deadline = f"@{parse_deadline(cfg.stop.deadline):.3f}"
    from pixpro_of.train.failures import TrainingFailure
    from pixpro_of.train.trainer import Trainer

    trainer = Trainer(cfg, run_dir)
    try:
        code = trainer.run()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        if not isinstance(exc, TrainingFailure):
            # Only an exception raised asynchronously (a signal handler) while the trainer was
            # handling another gets here; it still ends as one line and takes the workers along.
            trainer.loader.close(kill=True)
            text = (str(exc).strip().splitlines() or [""])[0]
            exc = TrainingFailure(f"{type(exc).__name__}: {text}")
        if trainer.backend.world_size > 1:
            fail_job(trainer.backend, exc)
        raise exc from None
    # Every rank gets here at the same step (finished, or a stop all ranks agreed on): release the
    # collective runtime while Python still runs. Left to the interpreter's exit, gloo's worker thread
    # may free a tensor after finalisation began and abort the rank (SIGABRT instead of exit 75).
    trainer.backend.shutdown()
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    return call(command, argv, "pixpro_of train")


def fail_job(backend, exc, code: int = 2, quiet_wait_s: float = 20.0, other_rank_grace_s: float = 2.0) -> None:
    """End every rank of the job after ``exc`` (a TrainingFailure) on this one; never returns.

    The rank that met the fault prints its one line and aborts the job (``MPI_Abort`` under
    ``mpirun``, so the other ranks do not wait in a collective for it; under torchrun or srun
    the launcher ends the others when this rank exits). So that one line is printed when several
    ranks meet the same fault (they read the same shards), rank 0 reports at once and the others
    wait ``other_rank_grace_s`` (or ``exc.grace_s``) first: rank 0's abort usually ends them in
    that time. A rank whose failure another rank reports (``exc.quiet``) waits for that rank's
    abort, and aborts silently if it does not come.
    """
    import time

    if exc.quiet:
        time.sleep(quiet_wait_s)
    else:
        grace = exc.grace_s if exc.grace_s is not None else (0.0 if backend.is_main else other_rank_grace_s)
        if grace > 0:
            time.sleep(grace)
        print(f"pixpro_of train: error: {exc}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    backend.abort(code)
