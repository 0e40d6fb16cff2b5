"""Cluster profiles: what one cluster's nodes, queues and MPI look like, read from a data file.

Profiles ship as TOML files in ``configs/clusters/`` (installed as the package ``launcher.profiles``).
A user directory given with ``--profile-dir`` (or ``$LAUNCHER_PROFILE_DIR``) is searched first, and
``--cluster`` also accepts a path to a ``.toml`` file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from launcher.launchers import LAUNCH_METHODS
from plumbing.errors import UserError
from plumbing.parse import checked, signal_name
from plumbing.parse import parse_duration as parse_duration_s

#: signals a scheduler sends before the time limit (the trainer catches each of them)
WARNING_SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP", "URG")

SCHEDULERS = ("slurm", "pbs", "sge", "pjm", "local")

#: The profile used when ``--cluster`` is not given.
DEFAULT_PROFILE = {"slurm": "slurm", "pbs": "pbs", "sge": "sge", "pjm": "pjm", "local": "local"}


@dataclass(frozen=True)
class ClusterProfile:
    """One cluster. Times are in seconds; counts are per node.

    ``setup`` lines are shell written by whoever wrote the profile (trusted, not user input);
    every other value is quoted when it goes into a job script.
    """

    name: str
    scheduler: str
    description: str = ""
    gpus_per_node: int = 0
    gpu_memory_gib: int = 0  # memory of one GPU (GiB); 0 = unknown. Known: the trainer refuses a batch that cannot fit
    cpus_per_node: int = 1
    cpu_ranks_per_node: int = 1  # ranks per node when --gpus 0
    cpus_per_rank: int = 0  # 0 = cpus_per_node / ranks per node (SLURM --cpus-per-task)
    max_nodes: int = 256  # the most nodes one job may ask for on this cluster
    queue: str = ""  # SLURM partition, PBS queue, SGE queue, PJM resource group
    node_resource: str = ""  # SGE: exclusive-node resource (rt_F, f_node); empty = use a parallel environment
    parallel_env: str = ""  # SGE: parallel environment name when node_resource is empty
    gpu_resource: str = "gpu"  # SGE/PBS name of the GPU resource when nodes are shared
    exclusive: bool = True  # ask for whole nodes (SLURM --exclusive)
    select_resources: Tuple[str, ...] = ("ncpus", "ngpus")  # PBS: per-chunk resources written in select=
    place: str = "scatter:excl"  # PBS -l place=; "" = leave it to the queue
    max_walltime_s: int = 24 * 3600
    default_walltime_s: int = 3600
    modules: Tuple[str, ...] = ()
    setup: Tuple[str, ...] = ()
    mpirun_flags: Tuple[str, ...] = ()
    env: Tuple[Tuple[str, str], ...] = ()  # exported in the job and forwarded to ranks
    local_dir_var: str = "TMPDIR"  # node-local scratch; /tmp when unset in the job
    warning_signal: str = ""  # scheduler's pre-kill signal (SLURM: USR2); "" = none
    warning_lead_s: int = 300
    deadline_margin_s: int = 600  # trainer deadline = job start + walltime - margin
    can_requeue: bool = False  # a job may requeue itself (scontrol requeue)
    group_on_command_line: bool = False  # SGE on ABCI 2.0: -g only on the qsub command line
    launch_method: str = "mpirun"
    python: str = ""  # interpreter on the compute nodes; "" = the one running the launcher
    activate: str = "auto"  # "auto": activate the launcher's venv/conda env in the job; "none"
    group_required: bool = False  # the cluster refuses jobs without --group (ABCI)
    max_timeouts: int = 20
    max_preemptions: int = 100
    mail: str = ""  # address for the scheduler's own mail on a job's end and failure; "" = none (--mail)
    notify: str = ""  # shell command run once when a run ends for good, outcome in its environment (--notify)
    source: str = ""

    def validate(self) -> None:
        where = self.source or self.name
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"profile {where}: scheduler {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if self.launch_method not in LAUNCH_METHODS:
            raise UserError(
                f"profile {where}: launch_method {self.launch_method!r} is not one of {', '.join(LAUNCH_METHODS)}"
            )
        if self.gpus_per_node < 0 or self.cpus_per_node < 1 or self.cpu_ranks_per_node < 1:
            raise UserError(f"profile {where}: gpus_per_node must be >= 0, cpus_per_node and cpu_ranks_per_node >= 1")
        if self.gpu_memory_gib < 0:
            raise UserError(f"profile {where}: gpu_memory_gib must be >= 0 (0 = unknown)")
        if self.cpus_per_rank < 0 or self.max_nodes < 1:
            raise UserError(f"profile {where}: cpus_per_rank must be >= 0 and max_nodes >= 1")
        if self.activate not in ("auto", "none"):
            raise UserError(f"profile {where}: activate {self.activate!r} is not 'auto' or 'none'")
        for key in ("warning_lead_s", "deadline_margin_s", "max_timeouts", "max_preemptions"):
            if getattr(self, key) < 0:
                raise UserError(f"profile {where}: {key} must be >= 0")
        if self.default_walltime_s > self.max_walltime_s:
            raise UserError(f"profile {where}: default_walltime exceeds max_walltime")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", self.local_dir_var):
            raise UserError(
                f"profile {where}: local_dir_var {self.local_dir_var!r} is not an environment variable name"
            )
        for key, _ in self.env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise UserError(f"profile {where}: env name {key!r} is not an environment variable name")
        bad = [r for r in self.select_resources if r not in ("ncpus", "ngpus", "mem")]
        if bad:
            raise UserError(f"profile {where}: select_resources {bad} (known: ncpus, ngpus)")
        if self.warning_signal:
            name = checked(signal_name, self.warning_signal, f"profile {where}: warning_signal")[3:]
            if name != self.warning_signal or name not in WARNING_SIGNALS:
                raise UserError(
                    f"profile {where}: warning_signal {self.warning_signal!r}: "
                    f"one of {', '.join(WARNING_SIGNALS)}, without SIG"
                )


def parse_duration(text: str, what: str = "--walltime") -> int:
    """Whole seconds of a duration in the one grammar (:func:`plumbing.parse.parse_duration`: a bare
    number is minutes); UserError naming ``what``."""
    return max(1, round(checked(parse_duration_s, str(text), what)))


def format_hms(seconds: int) -> str:
    """Seconds -> ``HH:MM:SS`` (hours may exceed 24), the form every scheduler accepts."""
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


_FIELDS = {f.name: f for f in dataclasses.fields(ClusterProfile)}
_TYPES = typing.get_type_hints(ClusterProfile)


def _check_type(key: str, value, source: str):
    """``value`` as the field's type (lists become tuples of strings); UserError naming the key."""
    want = _TYPES[key]
    if want is bool:
        ok, what = isinstance(value, bool), "true or false"
    elif want is int:
        ok, what = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif want is str:
        ok, what = isinstance(value, str), "a string"
    else:  # Tuple[str, ...]
        ok, what = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings"
        if ok:
            value = tuple(value)
    if not ok:
        raise UserError(f"profile {source}: {key} = {value!r} must be {what}")
    return value


def profile_from_dict(data: dict, source: str) -> ClusterProfile:
    """Build a profile from parsed TOML; unknown keys are errors that list the known ones."""
    kwargs: Dict[str, Any] = {}
    for key, value in data.items():
        if key in ("max_walltime", "default_walltime"):
            kwargs[key + "_s"] = parse_duration(value, f"profile {source}: {key}")
            continue
        if key not in _FIELDS or key in ("source",):
            known = sorted(k for k in _FIELDS if k not in ("source", "max_walltime_s", "default_walltime_s"))
            raise UserError(
                f"profile {source}: unknown key {key!r} (known: "
                f"{', '.join(known + ['max_walltime', 'default_walltime'])})"
            )
        if key == "env":
            if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) for v in value.values()):
                raise UserError(f'profile {source}: env must be a table of NAME = "value"')
            value = tuple((str(k), str(v)) for k, v in value.items())
        else:
            value = _check_type(key, value, source)
        if key == "warning_signal" and value:  # USR2, SIGUSR2, usr2: the schedulers' spelling, USR2
            value = checked(signal_name, value, f"profile {source}: warning_signal")[3:]
        kwargs[key] = value
    if "name" not in kwargs or "scheduler" not in kwargs:
        raise UserError(f"profile {source}: 'name' and 'scheduler' are required")
    try:
        prof = ClusterProfile(source=source, **kwargs)
    except TypeError as exc:
        raise UserError(f"profile {source}: {exc}") from None
    prof.validate()
    return prof


def _search_dirs(profile_dir: Optional[str]) -> List[Path]:
    dirs = []
    for label, d in (("--profile-dir", profile_dir), ("$LAUNCHER_PROFILE_DIR", os.environ.get("LAUNCHER_PROFILE_DIR"))):
        if d:
            if not Path(d).is_dir():
                raise UserError(f"{label}: {d} is not a directory of cluster profiles")
            dirs.append(Path(d))
    return dirs


def _builtin_files() -> Dict[str, Traversable]:
    root = resources.files("launcher.profiles")
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".toml")}


def available_profiles(profile_dir: Optional[str] = None) -> List[str]:
    """Names of every profile: the user's directories first, then the shipped ones."""
    names = set(_builtin_files())
    for d in _search_dirs(profile_dir):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def locate_profile(name: str, profile_dir: Optional[str] = None) -> Tuple[bytes, str]:
    """The raw TOML of a profile and where it is: a path to a .toml file, else the user directories, then shipped."""
    if name.endswith(".toml") or os.sep in name:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"--cluster: profile file {name} does not exist")
        return path.read_bytes(), str(path)
    for d in _search_dirs(profile_dir):
        path = d / f"{name}.toml"
        if path.is_file():
            return path.read_bytes(), str(path)
    builtin = _builtin_files()
    if name in builtin:
        return builtin[name].read_bytes(), f"{name}.toml"
    raise UserError(f"--cluster: unknown profile {name!r} (available: {', '.join(available_profiles(profile_dir))})")


def load_profile(name: str, profile_dir: Optional[str] = None) -> ClusterProfile:
    """Load a profile by name (user directory first, then shipped) or by path to a .toml file."""
    return _parse(*locate_profile(name, profile_dir))


def read_toml(raw: bytes, source: str) -> dict:
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"profile {source}: not valid TOML ({exc})") from None


def _parse(raw: bytes, source: str) -> ClusterProfile:
    return profile_from_dict(read_toml(raw, source), source)
