"""The reproduction's data: the pretraining shards (packed, then DIS flow into a copy) and the evaluation set.

Each step runs once: a marker file (the manifest, ``.dis-done``, ``synth.json``) says it is done.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

from pixpro_of.reproduction.plan import ROWS, ReproduceConfig
from plumbing.errors import UserError


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def run_logged(name: str, cmd: List[str], log: Path) -> None:
    """Run ``cmd`` to completion with its output in ``log``; UserError naming the log on failure."""
    print(f"[reproduce] {name}: {shlex.join(cmd)}", flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env()).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-10:]
        print("\n".join(tail), file=sys.stderr)
        raise UserError(f"{name} failed with exit code {rc}; full log: {log}")
    print(f"[reproduce] {name}: ok in {time.time() - t0:.1f}s", flush=True)


def shard_dirs(cfg: ReproduceConfig, data: Path) -> Dict[str, Path]:
    """The shard folder of each flow kind the rows need: ``gt`` (packed, exact flows) and ``dis``."""
    need_dis = cfg.flow == "dis" and any(ROWS[r].flow == "est" for r in cfg.rows)
    out = {"gt": data / "pretrain_gt"}
    if need_dis:
        out["dis"] = data / "pretrain_dis"
    return out


def data_commands(cfg: ReproduceConfig, data: Path) -> List[Tuple[str, List[str], Path]]:
    """(name, command, marker) of each data step: pack the pretraining videos, DIS flow into a copy."""
    py = sys.executable
    dirs = shard_dirs(cfg, data)
    spec = f"synth:videos={cfg.videos},frames={cfg.frames},size={cfg.size[0]}x{cfg.size[1]},seed={cfg.data_seed}"
    steps = [
        (
            "pack",
            [py, "-m", "hdf5_tools.cli", "pack", spec, str(dirs["gt"]), "--nodes", "1", "--no-progress"],
            dirs["gt"] / "manifest.json",
        )
    ]
    if "dis" in dirs:
        steps.append(
            (
                "flow dis",
                [
                    py,
                    "-m",
                    "hdf5_tools",
                    "flow",
                    str(dirs["gt"]),
                    "--model",
                    "dis",
                    "--recompute",
                    "--into",
                    str(dirs["dis"]),
                    "--threads",
                    str(cfg.prep_threads),
                    "--no-progress",
                ],
                dirs["dis"] / ".dis-done",
            )
        )
    return steps


def prepare_pretraining_shards(cfg: ReproduceConfig, data: Path, logs: Path) -> Dict[str, Path]:
    """Pack the pretraining videos and fill DIS flow into a copy (when a row needs it)."""
    if not any(ROWS[r].k for r in cfg.rows):
        return {}
    for name, cmd, marker in data_commands(cfg, data):
        if not marker.is_file():
            run_logged(name, cmd, logs / f"{name.replace(' ', '_')}.log")
            if name == "flow dis":
                marker.write_text("DIS flow computed over every pair of the packed shards\n")
    return shard_dirs(cfg, data)


def prepare_eval_set(cfg: ReproduceConfig, data: Path) -> Path:
    """The Cityscapes-layout evaluation set (world seed ``eval_seed``); returns its root."""
    from synth.writers import SynthConfig, write_dataset

    root = data / "cityscapes"
    if (root / "synth.json").is_file():
        return root
    t0 = time.time()
    write_dataset(
        root,
        SynthConfig(
            videos=cfg.eval_videos,
            frames=cfg.eval_frames,
            size=tuple(cfg.eval_size),
            seed=cfg.eval_seed,
            format="cityscapes",
            val_videos=cfg.eval_val_videos,
            cityscapes_every=cfg.eval_every,
            workers=1,
            overwrite=True,
        ),
    )
    print(f"[reproduce] evaluation set: {root} in {time.time() - t0:.1f}s", flush=True)
    return root
