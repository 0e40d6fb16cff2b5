"""Stages: the pipeline's commands as jobs (pack, flow, verify, train, convert, eval), one type each."""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from plumbing.errors import UserError

STAGES = ("pack", "flow", "verify", "train", "convert", "eval")
PACK_OUT = "shards"
CONVERT_OUT = "encoder_d2.pkl"
EVAL_OUT = "eval"


class Stage(abc.ABC):
    name: str = ""
    reads: str = ""  # "videos", "data", "run" or "" (what the stage's input option is)
    ranks: bool = False  # the command starts as ranks of the launch method
    writes_done: bool = False  # the command writes RUN_DIR/done itself (the trainer)
    deadline: bool = False  # the command takes --deadline ISO (stops and exits 75 before it)
    stages_data: bool = False  # the job copies the --data shards to node-local disk first

    def default_gpus(self, profile) -> int:
        """GPUs when ``--gpus`` is not given."""
        return 0

    def check_input(self, req) -> None:
        """The stage's input option is given and exists; a one-line UserError otherwise.

        In a pipeline an input an earlier stage writes (``req.data_pending``) is checked when the
        stage starts, not at submit."""
        option = {"videos": "--videos", "data": "--data", "run": "--from-run"}.get(self.reads)
        value = {"videos": req.videos, "data": req.data_manifest, "run": req.from_run}.get(self.reads)
        if option is None:
            return
        if not value:
            raise UserError(f"--stage {self.name} reads {option}; give it ({_HINT[self.reads]})")
        if self.reads == "videos" and not value.startswith("synth:") and not os.path.exists(value):
            raise UserError(f"--videos {value}: no such folder")
        if (
            self.reads == "run"
            and not req.data_pending
            and not (Path(value) / "job").is_dir()
            and not Path(value).is_file()
        ):
            raise UserError(f"--from-run {value}: not a run directory or checkpoint file")

    @abc.abstractmethod
    def command(self, req, python: str, cpus: int, backend: str) -> Tuple[List[str], List[str]]:
        """The stage's command line (the words after the launch method, if any) and the trainer's
        ``key=value`` overrides (empty for the other stages). ``cpus``: the CPUs of one process."""

    def extra(self, req) -> List[str]:
        """The user's own words for the command, verbatim (``key=value`` and ``--option value``)."""
        return list(req.stage_args)


_HINT = {
    "videos": "a BDD100K folder or a synth: spec",
    "data": "a shard manifest or its folder",
    "run": "the training run's directory",
}


class Pack(Stage):
    name = "pack"
    reads = "videos"

    def command(self, req, python, cpus, backend):
        out = os.path.join(req.run_dir, PACK_OUT)
        return [
            python,
            "-m",
            "hdf5_tools.cli",
            "pack",
            req.videos,
            out,
            "--nodes",
            str(req.node_sets),
            "-j",
            str(max(1, cpus)),
            "--no-progress",
            *self.extra(req),
        ], []


class Flow(Stage):
    name = "flow"
    reads = "data"
    ranks = True

    def default_gpus(self, profile):
        return profile.gpus_per_node

    def command(self, req, python, cpus, backend):
        folder = (
            os.path.dirname(os.path.abspath(req.data_manifest))
            if req.data_manifest.endswith(".json")
            else os.path.abspath(req.data_manifest)
        )
        return [python, "-m", "hdf5_tools.cli", "flow", folder, "--no-progress", *self.extra(req)], []


class Verify(Stage):
    name = "verify"
    reads = "data"

    def command(self, req, python, cpus, backend):
        return [python, "-m", "hdf5_tools.cli", "verify", req.data_manifest, *self.extra(req)], []


class Train(Stage):
    name = "train"
    ranks = True
    writes_done = True
    deadline = True
    stages_data = True

    def default_gpus(self, profile):
        return profile.gpus_per_node

    def check_input(self, req):
        return None  # the trainer's own config check says what it reads (launcher.request)

    def command(self, req, python, cpus, backend):
        from launcher.request import trainer_argv  # presets, the global batch, key=value overrides

        return trainer_argv(req, python, backend)


class Convert(Stage):
    name = "convert"
    reads = "run"

    def command(self, req, python, cpus, backend):
        return [
            python,
            "-m",
            "pixpro_of",
            "convert",
            os.path.abspath(req.from_run),
            "--to",
            "detectron2",
            os.path.join(req.run_dir, CONVERT_OUT),
            *self.extra(req),
        ], []


class Eval(Stage):
    name = "eval"
    reads = "run"

    def default_gpus(self, profile):
        return min(1, profile.gpus_per_node)

    def command(self, req, python, cpus, backend):
        return [
            python,
            "-m",
            "pixpro_of",
            "eval",
            "seg",
            "--backbone",
            os.path.abspath(req.from_run),
            "--out",
            os.path.join(req.run_dir, EVAL_OUT),
            *self.extra(req),
        ], []


class Smoke(Stage):
    """The self-check of ``launcher submit --smoke``: every rank of the run, the run's trainer config.

    Its words: the trainer's (``--run-dir``, ``--config``, the ``key=value`` overrides, the staged
    data) after ``pixpro_of smoke`` instead of ``pixpro_of train``, and the request's
    ``stage_args`` (``--ranks N --gpus-per-node G --rank-batch B``, from :mod:`launcher.smoke`)."""

    name = "smoke"
    ranks = True
    deadline = True
    stages_data = True

    def default_gpus(self, profile):
        return profile.gpus_per_node

    def check_input(self, req):
        return None  # the submit packs its shard set (launcher.smoke)

    def command(self, req, python, cpus, backend):
        from launcher.request import trainer_argv

        argv, overrides = trainer_argv(req, python, backend)  # PYTHON -m pixpro_of train --run-dir R [--config C]
        return [python, "-m", "pixpro_of", "smoke", *argv[4:], *req.stage_args], overrides


STAGE_TYPES: Dict[str, Stage] = {s.name: s for s in (Pack(), Flow(), Verify(), Train(), Convert(), Eval(), Smoke())}


def get_stage(name: Optional[str]) -> Stage:
    try:
        return STAGE_TYPES[name or "train"]  # "smoke" too, which --stage does not offer (submit --smoke)
    except KeyError:
        raise UserError(f"--stage {name!r}: choose from {', '.join(STAGES)}") from None
