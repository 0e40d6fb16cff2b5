"""What each link of a run ran with, in ``job/env/`` of the run directory, and how two links differ."""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from launcher.job_files import RunDir, now_iso
from plumbing.atomic import atomic_write_text

ENV_DIR = "env"
PACKAGES = ("torch", "torchvision", "horovod", "h5py", "numpy")
#: CUDA libraries that come as wheels (pip installs of torch): their version is the one in use.
RUNTIME_WHEELS = (
    "nvidia-nccl-cu13",
    "nvidia-nccl-cu12",
    "nvidia-nccl-cu11",
    "nvidia-cuda-runtime-cu13",
    "nvidia-cuda-runtime-cu12",
    "nvidia-cuda-runtime-cu11",
)
PROJECT = "pixpro-of"
SOURCE_ROOT = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT_S = 10


# -- gathering -----------------------------------------------------------------------------
def package_versions(names: Sequence[str] = PACKAGES + RUNTIME_WHEELS) -> Dict[str, Optional[str]]:
    """``{name: version}`` from the installed metadata (None: not installed); wheels that are not
    installed are left out, the named packages are always listed."""
    out: Dict[str, Optional[str]] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in PACKAGES:
                out[name] = None
    return out


def torch_build_cuda() -> Optional[str]:
    """``torch.version.cuda`` read from the installed ``torch/version.py`` (None: no torch, a CPU
    build, or a file this does not understand)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        try:
            text = (Path(folder) / "version.py").read_text()
        except OSError:
            continue
        return parse_torch_cuda(text)
    return None


def parse_torch_cuda(text: str) -> Optional[str]:
    """The ``cuda`` value of a torch ``version.py`` (``cuda: Optional[str] = '12.1'`` or ``cuda = None``)."""
    m = re.search(r"^cuda\s*(?::[^=\n]*)?=\s*(?:'([^']*)'|\"([^\"]*)\"|None)\s*$", text, re.MULTILINE)
    if not m:
        return None
    return m.group(1) or m.group(2) or None


def _run(argv: Sequence[str], cwd: Optional[Path] = None) -> Optional[str]:
    try:
        out = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL, cwd=cwd
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def project_info(root: Path = SOURCE_ROOT) -> dict:
    """This project's version and, for a git checkout, its commit ('unknown' when not known)."""
    try:
        version = metadata.version(PROJECT)
    except metadata.PackageNotFoundError:
        version = "unknown"
        try:
            m = re.search(r"version\s*=\s*[\"']([^\"']+)", (root / "setup.py").read_text())
            version = m.group(1) if m else "unknown"
        except OSError:  # not a checkout either: the version stays 'unknown'
            pass
    commit, dirty = "unknown", None
    if (root / ".git").exists() and shutil.which("git"):
        head = _run(["git", "-C", str(root), "rev-parse", "HEAD"])
        if head and head.strip():
            commit = head.strip()
            changes = _run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"])
            dirty = bool(changes.strip()) if changes is not None else None
    return {"version": version, "commit": commit, "dirty": dirty, "source": str(root)}


def modules(env: Mapping[str, str]) -> dict:
    """The loaded environment modules: ``$LOADEDMODULES`` and ``module list`` (None where there is
    no ``module`` command in a child shell)."""
    loaded = [m for m in env.get("LOADEDMODULES", "").split(":") if m]
    listing = None
    if any(k.startswith("BASH_FUNC_module") for k in env) or shutil.which("modulecmd") or env.get("LMOD_CMD"):
        try:
            out = subprocess.run(
                ["bash", "-c", "type module >/dev/null 2>&1 && module list 2>&1"],
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
                env=dict(env),
            )
            listing = out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            listing = None
    return {"loaded": loaded, "list": listing}


def parse_nvidia_smi(query_csv: str, banner: str) -> dict:
    """GPUs and versions from ``nvidia-smi --query-gpu=index,name,driver_version,memory.total
    --format=csv,noheader`` and the plain ``nvidia-smi`` banner (``CUDA Version: 12.4``)."""
    gpus, drivers = [], []
    for line in query_csv.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append({"index": parts[0], "name": parts[1], "memory": parts[3]})
            drivers.append(parts[2])
    m = re.search(r"CUDA Version:\s*([\d.]+)", banner or "")
    return {"gpus": gpus, "driver": drivers[0] if drivers else None, "cuda_driver": m.group(1) if m else None}


def gpu_info() -> Optional[dict]:
    """This node's GPUs as ``nvidia-smi`` sees them (None where there is no nvidia-smi)."""
    if not shutil.which("nvidia-smi"):
        return None
    query = _run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader"])
    banner = _run(["nvidia-smi"])
    info = parse_nvidia_smi(query or "", banner or "")
    if query is None:
        info["error"] = "nvidia-smi failed or timed out"
    return info


def read_hosts(hostfile: str) -> List[str]:
    try:
        return [line.split()[0] for line in Path(hostfile).read_text().splitlines() if line.split()]
    except OSError:
        return []


def _json_file(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def gather(rd: RunDir, hostfile: str, env: Mapping[str, str]) -> dict:
    """The record of the link described by ``env`` (the job script's ``LAUNCHER_*`` variables)."""
    torch_cuda = torch_build_cuda()
    gpu = gpu_info()
    if gpu is not None:
        gpu["torch_cuda"] = torch_cuda
    return {
        "time": now_iso(),
        "job_id": env.get("LAUNCHER_JOB_ID", "?"),
        "link": _int(env.get("LAUNCHER_LINK")),
        "restart": _int(env.get("LAUNCHER_RESTART_COUNT")),
        "stage": env.get("LAUNCHER_STAGE", "train") or "train",
        "host": socket.gethostname(),
        "hosts": read_hosts(hostfile),
        "python": {
            "executable": sys.executable,
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
        "packages": package_versions(),
        "torch_cuda": torch_cuda,
        "project": project_info(),
        "modules": modules(env),
        "gpu": gpu,
        "request": _json_file(rd.job / "request.json"),
        "config": _json_file(rd.config),
    }


def _int(text: Optional[str]) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


# -- the records of a run ------------------------------------------------------------------
def record_path(rd: RunDir, record: dict) -> Path:
    job = re.sub(r"[^A-Za-z0-9._-]", "_", str(record.get("job_id", "?")))
    return rd.job / ENV_DIR / f"link-{record.get('link', 0)}-r{record.get('restart', 0)}-{job}.json"


def write(rd: RunDir, record: dict) -> Path:
    path = record_path(rd, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def records(rd: RunDir) -> List[Tuple[Path, dict]]:
    """Every readable record of the run, oldest first (by the time written, then link and restart)."""
    out = []
    for p in (rd.job / ENV_DIR).glob("link-*.json"):
        rec = _json_file(p)
        if isinstance(rec, dict):
            out.append((p, rec))
    return sorted(out, key=lambda pr: (pr[1].get("time", ""), pr[1].get("link", 0), pr[1].get("restart", 0)))


# -- comparing -----------------------------------------------------------------------------
def _facts(rec: dict) -> Dict[str, Optional[str]]:
    """What a resumed link must share with the first, as ``{label: value}``."""
    py = rec.get("python") or {}
    project = rec.get("project") or {}
    gpu = rec.get("gpu") or {}
    facts: Dict[str, Optional[str]] = {
        "interpreter": py.get("executable"),
        "python": py.get("version"),
        "commit": project.get("commit"),
        "version": project.get("version"),
        "hosts": str(len(rec.get("hosts") or [])),
        "torch CUDA": rec.get("torch_cuda"),
        "driver": gpu.get("driver"),
        "driver CUDA": gpu.get("cuda_driver"),
        "GPUs per node": str(len(gpu.get("gpus") or [])) if rec.get("gpu") is not None else None,
        "modules": " ".join((rec.get("modules") or {}).get("loaded") or []) or None,
    }
    for name, version in sorted((rec.get("packages") or {}).items()):
        facts[name] = version
    return facts


def differences(first: dict, other: dict) -> List[str]:
    """``LABEL NEW (first: OLD)`` for each fact that differs (``none`` for a missing value)."""
    a, b = _facts(first), _facts(other)
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        if a.get(key) != b.get(key):
            out.append(f"{key} {b.get(key) or 'none'} (first: {a.get(key) or 'none'})")
    return out


def describe(rec: dict) -> str:
    """One line: interpreter, main packages, commit, hosts, GPUs."""
    py = rec.get("python") or {}
    pk = rec.get("packages") or {}
    project = rec.get("project") or {}
    commit = project.get("commit") or "unknown"
    parts = [f"python {py.get('version', '?')} ({py.get('executable', '?')})"]
    parts += [f"{n} {pk[n]}" for n in ("torch", "horovod") if pk.get(n)]
    parts.append(
        f"{PROJECT} {project.get('version', '?')}"
        + (f" at {commit[:12]}" + ("+changes" if project.get("dirty") else "") if commit != "unknown" else "")
    )
    parts.append(f"{len(rec.get('hosts') or [])} host(s)")
    gpu = rec.get("gpu")
    if gpu:
        parts.append(
            f"{len(gpu.get('gpus') or [])} GPU(s), driver {gpu.get('driver') or '?'}, "
            f"CUDA {gpu.get('cuda_driver') or '?'} (torch built for {rec.get('torch_cuda') or '?'})"
        )
    return ", ".join(parts)


def link_name(rec: dict) -> str:
    restart = rec.get("restart", 0)
    return (
        f"link {rec.get('link', 0)}" + (f" restart {restart}" if restart else "") + f" (job {rec.get('job_id', '?')})"
    )


def warnings(rd: RunDir) -> List[str]:
    """One line per link whose environment differs from the first link's."""
    recs = records(rd)
    if len(recs) < 2:
        return []
    first = recs[0][1]
    out = []
    for _, rec in recs[1:]:
        diff = differences(first, rec)
        if diff:
            out.append(f"{link_name(rec)} ran with another environment than {link_name(first)}: " + "; ".join(diff))
    return out


# -- the job's entry -------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None) -> int:
    """``python -m launcher.envrecord HOSTFILE``: write this link's record, say it in the log."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    if len(args) != 1 or not env.get("RUN_DIR"):
        print(
            "launcher envrecord: error: usage: python -m launcher.envrecord HOSTFILE (inside a job, with RUN_DIR set)",
            file=sys.stderr,
        )
        return 2
    rd = RunDir(env["RUN_DIR"])
    try:
        rec = gather(rd, args[0], env)
        path = write(rd, rec)
    except (OSError, ValueError) as exc:
        print(f"launcher: the environment record was not written ({exc})", flush=True)
        return 0
    print(f"launcher: environment: {describe(rec)}; recorded in {path.relative_to(rd.path)}", flush=True)
    recs = records(rd)
    if recs and recs[0][0] != path:
        diff = differences(recs[0][1], rec)
        if diff:
            print(
                f"launcher: warning: this link runs with another environment than {link_name(recs[0][1])}: "
                + "; ".join(diff),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
