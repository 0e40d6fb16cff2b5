"""``launcher profile init``: a cluster profile written from the cluster's own answers.

The scheduler's commands and their parsers are :mod:`launcher.cluster_probe`; this module runs
them (one line when a command is missing or fails), adds what no scheduler can tell (the lines a
user fills in: modules, setup, interpreter, GPU memory, MPI flags, mail), renders the TOML with a
comment above each value saying where it came from (commented-out lines for what to fill in),
checks that the text loads as a profile, and writes it atomically.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import click

from launcher.cluster_probe import DISCOVER, Line, missing
from launcher.clusters import format_hms, parse_duration, profile_from_dict, read_toml
from plumbing.atomic import atomic_write_text
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError

ASK_TIMEOUT_S = 60


def run_ask(argv: List[str]) -> str:
    """Run one of the scheduler's commands; its stdout, or a one-line UserError."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=ASK_TIMEOUT_S)
    except FileNotFoundError:
        raise UserError(f"{argv[0]}: command not found — run this on a login node of the cluster") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{' '.join(argv)}: no answer in {ASK_TIMEOUT_S} s (is the scheduler up?)") from None
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[0]
        raise UserError(f"{' '.join(argv)}: {said}")
    return proc.stdout


def toml_value(value: object) -> str:
    """A Python value as TOML: strings (JSON escapes are TOML's), booleans, integers, lists, tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict) or (isinstance(value, tuple) and value and all(isinstance(v, tuple) for v in value)):
        items = value.items() if isinstance(value, dict) else value
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in items) + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def user_lines(scheduler: str) -> List[Line]:
    """What no scheduler answers: the lines a user fills in (``modules = []`` is written as it is)."""
    lines = [
        missing(
            "gpu_memory_gib",
            40,
            "memory of one GPU in GiB (nvidia-smi --query-gpu=memory.total --format=csv on a "
            "compute node); when set, submit refuses a batch that cannot fit",
        ),
        missing("cpu_ranks_per_node", 2, "ranks per node of a CPU-only job (--gpus 0); default 1"),
        Line(
            "modules",
            [],
            "`module avail` on a login node lists your site's modules: the compiler, CUDA, NCCL and "
            'MPI to load in every job (e.g. ["gcc/12", "cuda/12.4", "openmpi/4.1"]); the job script sources '
            "the usual init script (/etc/profile.d/modules.sh, lmod) when `module` is not defined",
        ),
        missing(
            "setup",
            ["source /etc/profile.d/modules.sh"],
            "shell lines run before the modules are loaded (a site's own init script, `ulimit -n 65536`, ...)",
        ),
        missing(
            "python",
            "/path/to/venv/bin/python",
            "the interpreter on the compute nodes; default: the one "
            "running the launcher, whose venv or conda environment the job activates",
        ),
        missing(
            "mpirun_flags",
            ["-bind-to", "none"],
            'extra mpirun options for your MPI and network (e.g. ["-mca", "btl", "^openib"]); none by default',
        ),
    ]
    if scheduler != "sge":
        lines.append(
            missing(
                "local_dir_var",
                "TMPDIR",
                "the variable naming node-local scratch in a job "
                "(staged shards go there); default TMPDIR, /tmp when it is unset",
            )
        )
    lines += [
        missing("mail", "you@example.org", "the scheduler mails this address when a job ends or fails (--mail)"),
        missing(
            "notify",
            'mail -s "$LAUNCHER_SUMMARY" you@example.org < /dev/null',
            "a shell command run once when a run ends for good (--notify)",
        ),
    ]
    return lines


def option_lines(gpus_per_node: Optional[int], cpus_per_node: Optional[int], max_walltime: Optional[str]) -> List[Line]:
    out = []
    if gpus_per_node is not None:
        out.append(Line("gpus_per_node", gpus_per_node, "--gpus-per-node"))
    if cpus_per_node is not None:
        out.append(Line("cpus_per_node", cpus_per_node, "--cpus-per-node"))
    if max_walltime is not None:
        out.append(Line("max_walltime", format_hms(parse_duration(max_walltime, "--max-walltime")), "--max-walltime"))
    return out


def merge(found: Sequence[Line], given: Sequence[Line], extra: Sequence[Line]) -> List[Line]:
    """One line per key: an option beats the cluster's answer, which beats a fill-in line."""
    by_key: Dict[str, Line] = {}
    for line in [*extra, *found, *given]:
        old = by_key.get(line.key)
        if old is None or line.learned or not old.learned:
            by_key[line.key] = line
    order = [l.key for l in [*found, *given, *extra]]
    return [by_key[k] for k in dict.fromkeys(order)]


def render(name: str, scheduler: str, description: str, lines: Sequence[Line], header: str, named: str) -> str:
    out = [
        f"# Cluster profile {name!r} ({scheduler}), {header}.",
        "# Each value has a comment above it saying where it came from; a commented-out key is one the",
        "# cluster could not tell: fill it in or leave the default. Every key: docs/profiles.md;",
        f"# `launcher profile show {name}.toml` prints them all, with their defaults.",
    ]
    for line in [
        Line("name", name, named),
        Line("scheduler", scheduler, "--scheduler"),
        Line("description", description, "for `launcher profile list`, from the answers below"),
        *lines,
    ]:
        out.append("")
        out.append("# " + line.note)
        out.append(("" if line.learned else "# ") + f"{line.key} = {toml_value(line.value)}")
    return "\n".join(out) + "\n"


def build(
    scheduler: str,
    queue: Optional[str],
    name: str,
    ask=run_ask,
    gpus_per_node: Optional[int] = None,
    cpus_per_node: Optional[int] = None,
    max_walltime: Optional[str] = None,
    header: str = "",
    named: str = "--name",
) -> Tuple[str, List[Line]]:
    """The profile's TOML text and its lines (asks the scheduler through ``ask``)."""
    description, found = DISCOVER[scheduler](ask, queue)
    lines = merge(found, option_lines(gpus_per_node, cpus_per_node, max_walltime), user_lines(scheduler))
    text = render(name, scheduler, description, lines, header or "written by `launcher profile init`", named)
    return text, lines


@cli_command("init", epilog="Example: launcher profile init --scheduler slurm --queue gpu --out mycluster.toml")
@click.option(
    "--scheduler",
    required=True,
    type=click.Choice(["slurm", "pbs", "sge", "pjm"]),
    help="the cluster's scheduler (PJM: from the options only)",
)
@click.option(
    "--queue",
    default=None,
    help="SLURM partition, PBS or Grid Engine queue, PJM resource group (default: the cluster's default one)",
)
@click.option("--name", default=None, help="the profile's name (default: the --out file's name)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the profile file to write (.toml)")
@click.option("--force", is_flag=True, help="replace --out when it exists")
@click.option(
    "--gpus-per-node", type=click.IntRange(min=0), default=None, help="GPUs per node (instead of the cluster's answer)"
)
@click.option(
    "--cpus-per-node", type=click.IntRange(min=1), default=None, help="CPUs per node (instead of the cluster's answer)"
)
@click.option(
    "--max-walltime",
    default=None,
    help="the longest job, HH:MM:SS, D-HH:MM:SS, 4h or 2d; a bare number is minutes (instead of the cluster's answer)",
)
def command(scheduler, queue, name, out, force, gpus_per_node, cpus_per_node, max_walltime) -> int:
    """Write a cluster profile from the scheduler's own answers, every value commented with its source."""
    path = Path(out)
    if not path.name.endswith(".toml"):
        raise UserError(f"--out {out}: a profile file ends in .toml")
    if path.exists() and not force:
        raise UserError(f"--out {out} exists (add --force to replace it)")
    named = "--name" if name else "the --out file's name (--name sets another)"
    name = name or path.name[:-5]
    t0 = time.monotonic()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = f"written by `launcher profile init` on {socket.gethostname()}, {stamp}"
    text, lines = build(
        scheduler,
        queue,
        name,
        gpus_per_node=gpus_per_node,
        cpus_per_node=cpus_per_node,
        max_walltime=max_walltime,
        header=header,
        named=named,
    )
    profile_from_dict(read_toml(text.encode(), str(path)), str(path))  # what is written loads and validates
    atomic_write_text(path, text)
    took = time.monotonic() - t0
    yours = {l.key for l in user_lines(scheduler)}  # written for the user to fill in (modules = [] as it is)
    learned = [f"{l.key}={toml_value(l.value)}" for l in lines if l.learned and l.key not in yours]
    todo = [l.key for l in lines if not l.learned or l.key in yours]
    print(f"wrote {path} ({scheduler} profile {name!r}) in {took:.1f} s")
    print(f"  from the cluster: {', '.join(learned)}")
    print(f"  to fill in: {', '.join(todo)}")
    print(f"  check it: launcher profile show {path}")
    return 0


def main(argv=None) -> int:
    return call(command, argv, "launcher profile init")


if __name__ == "__main__":
    sys.exit(main())
