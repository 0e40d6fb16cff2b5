"""A job request (what the user asked for) and its plan (nodes, ranks, batch, deadline).

Resource math: ``--gpus G`` on a profile with P GPUs per node gives ``G / P`` nodes of P ranks
(or one node of G ranks when G < P); ``--gpus 0`` gives CPU ranks (``cpu_ranks_per_node`` per
node). A global batch must divide evenly over the ranks. Anything that does not divide is a
:class:`UserError` that says what would work.

The launcher knows the trainer only by its command line (``PYTHON -m pixpro_of train``): its
presets come from ``--list-presets``, and :func:`check_trainer_config` has the trainer resolve the
job's config (``--print-config``) before anything waits in a queue.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from launcher.clusters import ClusterProfile, format_hms
from launcher.launchers import get_launch_method
from launcher.sharedfs import check_shared, job_paths, local_roots
from launcher.stages import Stage, get_stage
from plumbing.errors import UserError

#: Characters allowed in values that go into scheduler directive lines (#SBATCH, #PBS, #$, #PJM).
DIRECTIVE_SAFE = re.compile(r"^[A-Za-z0-9_.:=,+/@%^-]*$")


@dataclass(frozen=True)
class JobRequest:
    """What the user asked for, after argument parsing. Times in seconds, paths absolute."""

    scheduler: str
    profile: ClusterProfile
    gpus: int
    name: str
    run_dir: str
    frames: Optional[int] = None
    preset: Optional[str] = None
    walltime_s: Optional[int] = None
    chain: int = 1
    launch_method: Optional[str] = None
    backend: Optional[str] = None
    trainer_command: Optional[str] = None  # replaces "PYTHON -m pixpro_of train"
    trainer_config: Optional[str] = None
    passthrough: Tuple[str, ...] = ()  # key=value for the trainer
    data_manifest: Optional[str] = None
    data_key: str = "data.shards"  # receives [STAGED_DIR/manifest.json]
    global_batch: Optional[int] = None
    batch_key: str = "data.batch_size"  # receives the global batch
    nodes: Optional[int] = None  # only for --gpus 0
    ranks_per_node: Optional[int] = None  # only for --gpus 0
    group: str = ""
    queue: Optional[str] = None
    python: Optional[str] = None
    max_timeouts: Optional[int] = None
    max_preemptions: Optional[int] = None
    cpus_per_rank: Optional[int] = None
    stage: str = "train"  # launcher.stages: pack, flow, verify, train, convert, eval
    videos: Optional[str] = None  # pack: the source folder or synth: spec
    from_run: Optional[str] = None  # convert, eval: the training run
    node_sets: int = 1  # pack: node sets to balance the frames across (hdf5_tools pack --nodes)
    stage_args: Tuple[str, ...] = ()  # words for a stage's command other than the trainer, verbatim
    data_pending: bool = False  # a pipeline's earlier stage writes --data / --from-run: checked when the job starts
    mail: str = ""  # the scheduler's mail on each job's end and failure (resolved: --mail, else the profile's)
    notify: str = ""  # shell command run once when the run ends for good (launcher.notify)
    allow_node_local_paths: bool = False  # skip the shared-filesystem check of multi-node jobs


@dataclass(frozen=True)
class JobPlan:
    """Everything the templates need, all derived and checked. Times in seconds."""

    request: JobRequest
    name: str  # safe for directives
    run_dir: str
    nodes: int
    ranks_per_node: int
    gpus_per_node: int  # GPUs asked for per node (0 for CPU runs)
    cpus_per_rank: int
    walltime_s: int
    walltime_hms: str
    deadline_margin_s: int
    warning_lead_s: int
    launch_method: str
    backend: str
    queue: str
    group: str
    chain: int
    max_timeouts: int
    max_preemptions: int
    python: str
    activate: Tuple[str, ...]  # shell lines that activate the submitting Python environment
    command_argv: Tuple[str, ...]  # the stage's command and options (the trainer: the script adds --deadline)
    command_overrides: Tuple[str, ...]  # the trainer's key=value (the script adds the staged data directory)
    per_rank_batch: Optional[int]
    data_manifest: str
    share: bool = False  # fewer GPUs than a node has: its share of the node's CPUs, not the whole node
    cpus_per_node: int = 0  # CPUs asked for on each node (PBS ncpus=): the whole node's, or the share's

    @property
    def exclusive(self) -> bool:
        """Ask for whole nodes (SLURM --exclusive, PBS place=...:excl): the profile says so and the job fills them."""
        return self.profile.exclusive and not self.share

    @property
    def place(self) -> str:
        """PBS ``-l place=``: the profile's, without ``excl`` for a share of a node."""
        if not self.share:
            return self.profile.place
        return ":".join(p for p in self.profile.place.split(":") if p not in ("excl", "exclhost"))

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def stage(self) -> Stage:
        return get_stage(self.request.stage)

    @property
    def profile(self) -> ClusterProfile:
        return self.request.profile


def safe_job_name(name: str) -> str:
    """A job name schedulers accept in a directive: letters, digits, ``_ . -``; at most 64 chars.

    PBS also wants the first character to be a letter.
    """
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]
    if not cleaned or not cleaned[0].isalpha():
        cleaned = ("r" + cleaned)[:64]
    return cleaned


#: Longest run name: the run directory and the staging directory ``<name>-<job id>`` must fit a
#: file name (255 bytes) with room for the job id.
MAX_NAME = 200


def check_name(name: str) -> None:
    if not name or not name.strip():
        raise UserError("--name: the run name is empty; give a name such as pixpro-k6")
    if "/" in name or name in (".", "..") or name.startswith("-") or "\0" in name:
        raise UserError(f"--name {name!r}: give a name without '/' that does not start with '-'")
    if len(name.encode()) > MAX_NAME:
        raise UserError(f"--name: {len(name.encode())} bytes is too long for a file name; use at most {MAX_NAME}")


#: The trainer as the job runs it, after the interpreter (unless ``--trainer-command`` replaces it).
TRAINER_MODULE = ("-m", "pixpro_of", "train")


def _ask_trainer(args: Sequence[str]) -> subprocess.CompletedProcess:
    """Run ``THIS_PYTHON -m pixpro_of train ARGS`` (the submitting interpreter; no torch is imported)."""
    argv = [sys.executable, *TRAINER_MODULE, *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"cannot ask the trainer ({shlex.join(argv[:4])} ...): {exc}") from None


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The trainer's own one-line message: its last line on stderr, without the ``PROG: error:`` prefix."""
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    if not lines:
        return f"exit code {proc.returncode}"
    last = lines[-1]
    head, sep, rest = last.partition("error: ")
    return rest if sep and rest else last


@lru_cache(maxsize=None)
def trainer_presets() -> Tuple[str, ...]:
    """The trainer's shipped presets as its command line lists them; empty when it cannot say."""
    proc = _ask_trainer(["--list-presets"])
    if proc.returncode != 0:
        return ()
    return tuple(line.strip() for line in proc.stdout.splitlines() if line.strip())


def _print_config_argv(plan: "JobPlan") -> List[str]:
    """The trainer's words that resolve the job's config without running anything."""
    argv = list(plan.command_argv[len(TRAINER_MODULE) + 1 :])
    if "--run-dir" in argv:  # the config check writes nothing and needs no run directory
        i = argv.index("--run-dir")
        del argv[i : i + 2]
    overrides = list(plan.command_overrides)
    if plan.data_manifest and not plan.request.data_pending:
        overrides.append(f"{plan.request.data_key}=[{plan.data_manifest}]")
    memory = []
    if plan.profile.gpu_memory_gib and plan.gpus_per_node:  # the card is known: the batch must fit on it
        memory = ["--gpu-memory-gib", str(plan.profile.gpu_memory_gib), "--ranks", str(plan.ranks)]
    return [*argv, "--print-config", *memory, *overrides]


@lru_cache(maxsize=64)
def _printed(argv: Tuple[str, ...]) -> subprocess.CompletedProcess:
    return _ask_trainer(argv)


def check_trainer_config(plan: "JobPlan") -> None:
    """Have the trainer resolve the job's config (``--config``, every ``key=value``) before submitting.

    A refusal becomes one UserError line carrying the trainer's own message. A custom
    ``--trainer-command`` is not asked: the launcher knows no way to check it.
    """
    if plan.request.trainer_command or plan.request.stage != "train":
        return
    proc = _printed(tuple(_print_config_argv(plan)))
    if proc.returncode != 0:
        raise UserError(f"the trainer refuses this config: {_one_line(proc)}")
    _check_data_reads(plan, proc.stdout)


def resolved_trainer_config(plan: "JobPlan") -> dict:
    """The trainer's resolved config for a training plan (its ``--print-config`` JSON); {} when it cannot say."""
    if plan.request.trainer_command or plan.request.stage != "train":
        return {}
    proc = _printed(tuple(_print_config_argv(plan)))
    try:
        return json.loads(proc.stdout) if proc.returncode == 0 else {}
    except ValueError:
        return {}


def _check_data_reads(plan: "JobPlan", printed: str) -> None:
    """What the trainer's resolved config (its ``--print-config`` JSON) will read must exist now.

    Shards: ``--data``, unless the config names its own (``data.shards``) or uses the synthetic
    world (``data.synthetic``). Flows: with ``data.k`` > 1 from stored flows
    (``data.flow_source=shards``) every adjacent pair of the ``--data`` manifest's shards, counted
    from the manifest (:func:`hdf5_tools.manifest.flow_coverage`).
    """
    from hdf5_tools import manifest as mf

    try:
        data = json.loads(printed)["data"]
        shards, synthetic = list(data.get("shards") or []), bool(data.get("synthetic"))
        k, flow_source = int(data.get("k", 1)), str(data.get("flow_source", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return  # not the config this launcher knows: the trainer checked it, nothing more to say
    argv = list(plan.command_argv)
    config = Path(argv[argv.index("--config") + 1]).name if "--config" in argv[:-1] else "(defaults)"
    if not plan.data_manifest and not shards and not synthetic:
        raise UserError(
            f"--data: the trainer config {config} reads shards (data.synthetic=false) and none are given; "
            f"add --data SHARDS/manifest.json (written by 'hdf5_tools pack'), or data.synthetic=true "
            f"for the synthetic world"
        )
    if plan.data_manifest and k > 1 and flow_source == "shards" and not plan.request.data_pending:
        cov = mf.flow_coverage(plan.data_manifest)
        if not cov.complete:
            folder = os.path.dirname(mf.manifest_file(plan.data_manifest))
            raise UserError(
                f"--data: {cov.missing} of {cov.pairs} flow pairs are missing ({cov.shards_incomplete} of "
                f"{cov.shards} shards) and data.k={k} reads them from the shards; fill them with "
                f"'hdf5_tools flow {shlex.quote(folder)} --model raft-small --weights raft-small.pth' "
                f"(or --model dis), or estimate them in training with data.flow_source=raft data.raft_weights=FILE"
            )


def submitting_environment() -> Tuple[str, ...]:
    """Shell lines that activate the Python environment running the launcher (venv or conda).

    Empty for a system interpreter. The lines quote every path; they run before anything else
    of the job, so console scripts (``horovodrun``, ``torchrun``) and the environment's libraries
    come from the same place as the interpreter.
    """
    prefix = sys.prefix
    conda_exe = os.environ.get("CONDA_EXE", "")
    if os.environ.get("CONDA_PREFIX") == prefix and conda_exe and os.path.isfile(conda_exe):
        hook = Path(conda_exe).resolve().parent.parent / "etc" / "profile.d" / "conda.sh"
        if hook.is_file():
            # conda's activation scripts are not written for ``set -u``
            return ("set +u", f"source {shlex.quote(str(hook))}", f"conda activate {shlex.quote(prefix)}", "set -u")
    activate = Path(prefix) / "bin" / "activate"
    if prefix != sys.base_prefix and activate.is_file():
        return (f"source {shlex.quote(str(activate))}",)
    return ()


def _divisors_hint(total: int, per: int) -> str:
    lo = (total // per) * per
    hi = lo + per
    options = [str(v) for v in (lo, hi) if v > 0]
    return " or ".join(options)


def plan_job(req: JobRequest) -> JobPlan:
    """Check a request against its profile and derive nodes, ranks, batch and walltime."""
    prof = req.profile
    if req.gpus < 0:
        raise UserError(f"--gpus {req.gpus}: must be 0 (CPU ranks) or more")
    if req.chain < 1:
        raise UserError(f"--chain {req.chain}: must be at least 1")
    check_name(req.name)
    for label, value in (("--max-timeouts", req.max_timeouts), ("--max-preemptions", req.max_preemptions)):
        if value is not None and value < 0:
            raise UserError(f"{label} {value}: must be 0 or more (0 = stop at the first one)")
    stage = get_stage(req.stage)
    if req.gpus == 0:
        # a stage that is one process (pack, verify, convert, eval) has one rank with the node's CPUs
        rpn = req.ranks_per_node or (prof.cpu_ranks_per_node if stage.ranks else 1)
        nodes = req.nodes or 1
        gpn = 0
    else:
        if req.nodes is not None or req.ranks_per_node is not None:
            raise UserError(
                "--nodes/--ranks-per-node are for CPU runs (--gpus 0); with GPUs they follow from the profile"
            )
        if prof.gpus_per_node == 0:
            raise UserError(f"--gpus {req.gpus}: profile {prof.name} has no GPUs (use --gpus 0)")
        if req.gpus <= prof.gpus_per_node:
            nodes, rpn = 1, req.gpus
        elif req.gpus % prof.gpus_per_node:
            raise UserError(
                f"--gpus {req.gpus} does not fill whole nodes of profile {prof.name} "
                f"({prof.gpus_per_node} GPUs per node); use {_divisors_hint(req.gpus, prof.gpus_per_node)}"
            )
        else:
            nodes, rpn = req.gpus // prof.gpus_per_node, prof.gpus_per_node
        gpn = rpn
    if req.gpus > 0 and not stage.ranks:
        nodes, rpn, gpn = 1, 1, req.gpus  # one process with the GPUs it asked for (at most a node's)
        if req.gpus > prof.gpus_per_node:
            raise UserError(
                f"--gpus {req.gpus}: --stage {stage.name} is one process; give at most the "
                f"{prof.gpus_per_node} GPUs of one node of profile {prof.name}"
            )
    if nodes < 1 or rpn < 1:
        raise UserError("--nodes and --ranks-per-node must be at least 1")
    if nodes > prof.max_nodes:
        what = f"--gpus {req.gpus} needs {nodes} nodes" if req.gpus else f"--nodes {nodes}"
        most = (
            f"at most {prof.max_nodes} nodes ({prof.max_nodes * prof.gpus_per_node} GPUs)"
            if req.gpus
            else f"at most {prof.max_nodes} nodes"
        )
        raise UserError(f"{what}; profile {prof.name} allows {most}")
    if prof.group_required and not req.group:
        raise UserError(f"profile {prof.name} needs --group: the cluster charges every job to a group or project")
    # a GPU job on part of a node asks for its share of the node's CPUs (GPUs asked / GPUs per node)
    share = 0 < gpn < prof.gpus_per_node
    node_cpus = max(1, prof.cpus_per_node * gpn // prof.gpus_per_node) if share else prof.cpus_per_node
    cpus_each = node_cpus // rpn
    cpus = req.cpus_per_rank if req.cpus_per_rank is not None else (prof.cpus_per_rank or max(1, cpus_each))
    if cpus < 1:
        raise UserError(f"--cpus-per-rank {cpus}: must be at least 1")
    if cpus > max(1, cpus_each):
        of = (
            f"the {node_cpus} CPUs of the job's share ({gpn} of {prof.gpus_per_node} GPUs) of a node"
            if share
            else f"the {prof.cpus_per_node} CPUs of a node"
        )
        raise UserError(
            f"--cpus-per-rank {cpus}: {rpn} ranks per node x {cpus} CPUs exceed {of} of profile "
            f"{prof.name}; use at most {max(1, cpus_each)}"
        )
    ranks = nodes * rpn
    per_rank_batch = None
    if req.global_batch is not None:
        if req.global_batch < 1 or req.global_batch % ranks:
            lo = max(ranks, (req.global_batch // ranks) * ranks)
            raise UserError(
                f"--global-batch {req.global_batch} does not divide over {ranks} ranks; "
                f"use a multiple of {ranks} such as {lo} or {lo + ranks}"
            )
        per_rank_batch = req.global_batch // ranks
    walltime = req.walltime_s if req.walltime_s is not None else prof.default_walltime_s
    if walltime > prof.max_walltime_s:
        raise UserError(
            f"--walltime {format_hms(walltime)} exceeds the maximum {format_hms(prof.max_walltime_s)} of "
            f"profile {prof.name}; "
            f"use --chain to continue in further jobs"
        )
    margin = min(prof.deadline_margin_s, walltime // 4)
    lead = min(prof.warning_lead_s, walltime // 4)
    method = req.launch_method or prof.launch_method
    backend = get_launch_method(method).check(req.scheduler, req.backend)
    queue = prof.queue if req.queue is None else req.queue
    for label, text in (("--queue", queue), ("--group", req.group)):
        if not DIRECTIVE_SAFE.match(text):
            raise UserError(f"{label} {text!r}: only letters, digits and _ . : = , + / @ % ^ - are allowed")
    if req.data_pending:
        manifest = os.path.abspath(req.data_manifest or "")
    else:
        manifest = _check_manifest(req.data_manifest, nodes) if req.data_manifest else ""
    if manifest != (req.data_manifest or ""):
        req = dataclasses.replace(req, data_manifest=manifest)
    python = req.python or prof.python or sys.executable
    activate = submitting_environment() if not (req.python or prof.python) and prof.activate == "auto" else ()
    if not req.allow_node_local_paths:
        check_shared(job_paths(req.run_dir, python, manifest), nodes, local_roots(prof.local_dir_var, os.environ))
    _check_mail(req)
    stage.check_input(req)
    command, overrides = stage.command(req, python, cpus, backend)
    return JobPlan(
        request=req,
        name=safe_job_name(req.name),
        run_dir=req.run_dir,
        nodes=nodes,
        ranks_per_node=rpn,
        gpus_per_node=gpn,
        cpus_per_rank=cpus,
        walltime_s=walltime,
        walltime_hms=format_hms(walltime),
        deadline_margin_s=margin,
        warning_lead_s=lead,
        launch_method=method,
        backend=backend,
        queue=queue,
        group=req.group,
        chain=req.chain,
        max_timeouts=prof.max_timeouts if req.max_timeouts is None else req.max_timeouts,
        max_preemptions=prof.max_preemptions if req.max_preemptions is None else req.max_preemptions,
        python=python,
        activate=activate,
        command_argv=tuple(command),
        command_overrides=tuple(overrides),
        per_rank_batch=per_rank_batch,
        data_manifest=manifest,
        share=share,
        cpus_per_node=node_cpus,
    )


#: One mail address (``user@host``); ``--mail`` takes one or several, separated by commas.
MAIL_ADDRESS = re.compile(r"^[A-Za-z0-9_.+%-]+@[A-Za-z0-9_.-]+$")


def _check_mail(req: JobRequest) -> None:
    if not req.mail:
        return
    if req.scheduler == "local":
        raise UserError(f"--mail {req.mail}: the local runner sends no mail; use --notify with a command that does")
    bad = [a for a in req.mail.split(",") if not MAIL_ADDRESS.match(a)]
    if bad:
        raise UserError(
            f"--mail {req.mail!r}: {bad[0]!r} is not a mail address like user@example.org "
            f"(several: separate them with commas)"
        )


def _check_manifest(path: str, nodes: int) -> str:
    """``--data`` must be a shard manifest (or the folder holding its ``manifest.json``), every shard
    present, packed for at least ``nodes`` node sets. Returns the manifest file's absolute path."""
    from hdf5_tools import manifest as mf

    if Path(path).is_dir():
        if not (Path(path) / mf.MANIFEST_NAME).is_file():
            raise UserError(
                f"--data: {path} is a folder without a {mf.MANIFEST_NAME}; give the OUT folder of "
                f"'hdf5_tools pack' or its {mf.MANIFEST_NAME}"
            )
        path = str(Path(path) / mf.MANIFEST_NAME)
    elif not Path(path).is_file():
        raise UserError(f"--data: shard manifest {path} does not exist")
    try:
        m = mf.load_manifest(path)
    except UserError as exc:  # name the option
        raise UserError(f"--data: {exc}") from None
    if nodes > m.nodes:
        raise UserError(
            f"--data: {path} was packed for {m.nodes} node set(s) but the job has {nodes} nodes; "
            f"repack with 'hdf5_tools pack --nodes {nodes}' or use at most {m.nodes} nodes"
        )
    return str(Path(path).resolve())


def trainer_argv(req: JobRequest, python: str, backend: str) -> Tuple[List[str], List[str]]:
    """The trainer's command and options, and its ``key=value`` overrides.

    The job script puts ``--deadline ISO`` between the two and appends the staged data directory.
    Shape: ``PYTHON -m pixpro_of train --run-dir DIR [--config FILE|PRESET] [key=value ...]``.
    """
    if req.trainer_command:
        try:
            argv = shlex.split(req.trainer_command)
        except ValueError as exc:
            raise UserError(f"--trainer-command: {exc}") from None
        if not argv:
            raise UserError("--trainer-command is empty")
    else:
        argv = [python, "-m", "pixpro_of", "train"]
    argv += ["--run-dir", req.run_dir]
    overrides: List[str] = []
    if req.frames is not None and req.frames < 1:
        raise UserError(f"--frames {req.frames}: must be at least 1")
    if req.trainer_config:
        if req.preset:
            raise UserError("--config and --preset both choose the trainer config; give one")
        if not Path(req.trainer_config).is_file():
            raise UserError(f"--config: trainer config {req.trainer_config} does not exist")
        argv += ["--config", str(Path(req.trainer_config).resolve())]
        if req.frames is not None:
            overrides.append(f"data.k={req.frames}")
    elif req.preset:
        presets = trainer_presets()
        if presets and req.preset not in presets:
            raise UserError(f"--preset {req.preset!r}: no such trainer preset (presets: {', '.join(presets)})")
        argv += ["--config", req.preset]
        if req.frames is not None:
            overrides.append(f"data.k={req.frames}")
    elif req.frames is not None:
        presets = trainer_presets()
        if f"pixpro_k{req.frames}" in presets or not presets:
            argv += ["--config", f"pixpro_k{req.frames}"]
        else:
            # Any clip length: the flow preset (k = 6) with k changed; they differ only in data.k.
            argv += ["--config", "pixpro_k6"]
            overrides.append(f"data.k={req.frames}")
    overrides.append(f"dist.backend={backend}")
    if req.global_batch is not None:
        overrides.append(f"{req.batch_key}={req.global_batch}")
    overrides += list(req.passthrough)
    return argv, overrides


def passthrough_args(extra: Sequence[str]) -> List[str]:
    """Unknown CLI words -> trainer ``key=value`` overrides.

    ``key=value`` stays; ``--some-option value`` and ``--some-option=value`` become
    ``some_option=value``; a ``--flag`` followed by another option (or nothing) becomes ``flag=true``.
    """
    out: List[str] = []
    i = 0
    words = list(extra)
    while i < len(words):
        w = words[i]
        if w.startswith("--") and len(w) > 2:
            key = w[2:]
            if "=" in key:
                k, v = key.split("=", 1)
                out.append(f"{k.replace('-', '_')}={v}")
                i += 1
                continue
            if i + 1 < len(words) and not words[i + 1].startswith("--"):
                out.append(f"{key.replace('-', '_')}={words[i + 1]}")
                i += 2
            else:
                out.append(f"{key.replace('-', '_')}=true")
                i += 1
            continue
        if "=" in w and not w.startswith("-") and w.split("=", 1)[0]:
            out.append(w)
            i += 1
            continue
        raise UserError(f"unexpected argument {w!r}: trainer options are key=value or --option value")
    return out
