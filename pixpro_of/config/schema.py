"""The training configuration's sections: every key with its default (the seed's values,
docs/original-system.md §2), one line of doc and its checks, declared together (:func:`setting`).

Imports neither torch nor numpy, so ``--help`` and config checks are fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional

from pixpro_of.config.fields import (
    Grammar,
    Section,
    above,
    at_least,
    one_of,
    rule,
    section,
    setting,
    validate_tree,
    within,
)
from plumbing.parse import parse_deadline, signal_name

ARCHS = ("resnet18", "resnet34", "resnet50")
LOSS_NORMS = ("seed", "pixel")
MASK_MODES = ("seed", "unflow", "none")
POSITIVE_RULES = ("pixel", "normalized")
FLOW_RESOLUTIONS = ("coarse", "full")
POSITIVES_MODES = ("worker", "stored", "raft")


@dataclass
class RunConfig(Section):
    """Global run settings."""

    KEY: ClassVar[str] = "run"
    seed: int = setting(0, "the run's random seed")
    epochs: int = setting(2000, "video epochs: one clip per video each (seed §2.3)", at_least(1))
    max_steps: int = setting(
        0, "> 0: end after this many optimizer steps in all (the schedules still span epochs)", at_least(0)
    )
    device: str = setting("auto", "auto (cuda when available), cpu or cuda", one_of(("auto", "cpu", "cuda")))
    deterministic: bool = setting(
        False, "torch.use_deterministic_algorithms: a resumed run is bit-identical to an uninterrupted one"
    )
    threads: int = setting(0, "> 0: torch.set_num_threads", at_least(0))


def _world_used(s) -> bool:
    """The synthetic world is used (and checked) only when there are no shards."""
    return s.up is None or (s.up.synthetic and not s.up.shards)


@dataclass
class SynthDataConfig(Section):
    """The synthetic world packed into ``RUN_DIR/data`` when ``data.shards`` is empty."""

    KEY: ClassVar[str] = "data.synth"
    videos: int = setting(16, "videos in the world", rule(lambda v, s: v >= 1, "must be >= 1", when=_world_used))
    frames: int = setting(
        10,
        "frames per video, at least data.k",
        rule(lambda v, s: s.up is None or v >= s.up.k, lambda s: f"must be >= data.k = {s.up.k}", when=_world_used),
    )
    width: int = setting(
        128,
        "frame width in pixels; width and height at least 16",
        rule(
            lambda v, s: v >= 16 and s.sec.height >= 16,
            "must be >= 16",
            key="width/height",
            got=lambda s: (s.sec.width, s.sec.height),
            when=_world_used,
        ),
    )
    height: int = setting(64, "frame height in pixels")
    seed: int = setting(0, "the world's seed")


@dataclass
class PositiveConfig(Section):
    """How positive pairs are found (docs/original-system.md §2.4–2.7); the ``data.*`` keys of these
    names, read by :func:`pixpro_of.positives.compute_positives`."""

    KEY: ClassVar[str] = "data"
    pos_ratio: float = setting(0.7, "the positive threshold, in units of the larger bin diagonal", above(0))
    positive_rule: str = setting(
        "pixel", "pixel (the seed fork) or normalized (original PixPro, for image datasets)", one_of(POSITIVE_RULES)
    )
    mask: str = setting("seed", "the occlusion mask: seed (forward-backward check), unflow or none", one_of(MASK_MODES))
    alpha1: float = setting(0.01, "the mask's constant alpha1 (seed §2.6)", at_least(0))
    alpha2: float = setting(0.5, "the mask's constant alpha2 (seed §2.6; unflow: px² at full resolution)", at_least(0))
    flow_resolution: str = setting(
        "coarse", "coarse (chain and mask on the 1/8 grid) or full (seed-exact, ~64× slower)", one_of(FLOW_RESOLUTIONS)
    )


@dataclass
class SampleConfig(PositiveConfig):
    """How a sample is built from a clip (:class:`pixpro_of.data.pipeline.SampleBuilder`): the
    positive settings and the views."""

    image_size: int = setting(
        224, "the side of each square view in pixels", rule(lambda v, s: v >= 32, "must be at least 32")
    )
    crop_scale: List[float] = setting(
        [0.08, 1.0],
        "RandomResizedCrop's area range [min, max]",
        rule(lambda v, s: len(v) == 2 and 0 < v[0] <= v[1] <= 1, "must be [min, max] with 0 < min <= max <= 1"),
    )
    crop_ratio: List[float] = setting(
        [3 / 4, 4 / 3],
        "RandomResizedCrop's aspect range [min, max]",
        rule(lambda v, s: len(v) == 2 and 0 < v[0] <= v[1], "must be [min, max] with 0 < min <= max"),
    )


def _raft_needs(s) -> bool:
    """Flow estimated on the device: ``flow_source=raft`` with a clip of more than one frame."""
    return s.sec.flow_source == "raft" and s.sec.k != 1


@dataclass
class DataConfig(SampleConfig):
    """Where clips come from and how samples are built; ``k``, ``flow_source`` and ``positives_on``
    choose one :meth:`positives_mode`."""

    image_size: int = setting(
        224,
        "the side of each square view in pixels (training needs whole C5 cells)",
        rule(lambda v, s: v >= 32 and v % 32 == 0, "must be a multiple of 32, at least 32"),
    )
    shards: List[str] = setting(
        [],
        "HDF5 shard files, directories of *.h5, glob patterns, or one manifest "
        "(manifest.json from hdf5_tools pack, or .txt with one path a line)",
    )
    synthetic: bool = setting(True, "with no shards, pack the synthetic world (synth) into RUN_DIR/data and use it")
    k: int = setting(6, "the clip length in frames, both ends included (1 = same-frame baseline)", at_least(1))
    batch_size: int = setting(1024, "the global batch over all ranks", at_least(1))
    num_workers: int = setting(4, "DataLoader workers per rank", at_least(0))
    prefetch_factor: int = setting(2, "batches each DataLoader worker loads ahead", at_least(1))
    positives_on: str = setting(
        "worker",
        "worker (each sample's positives in the DataLoader workers) or device (the "
        "batch's, on the training device, from the stored flows the workers pass on)",
        one_of(("worker", "device")),
    )
    decode_on: str = setting(
        "worker",
        "worker (the workers decode the JPEGs and build both views) or device (they "
        "read the bytes and flows; the device decodes and builds the views)",
        one_of(("worker", "device")),
        rule(
            lambda v, s: v == "worker" or not _raft_needs(s),
            "must be worker when data.flow_source=raft (RAFT needs every frame decoded in the workers)",
        ),
    )
    decode_chunk: int = setting(64, "frames the device decodes at a time (decode_on=device)", at_least(1))
    flow_source: str = setting(
        "shards",
        "shards (the stored flows), none (zero flow: positives from the crop "
        "geometry alone) or raft (estimated on the device from every frame)",
        one_of(("shards", "none", "raft")),
        rule(
            lambda v, s: v != "none" or s.sec.mask == "none",
            "must be none when data.flow_source=none (no flow, so no forward-backward check)",
            key="mask",
            got=lambda s: s.sec.mask,
        ),
    )
    raft_model: str = setting(
        "raft-small", "the RAFT network of flow_source=raft", one_of(("raft-small", "raft-large"))
    )
    raft_weights: str = setting(
        "",
        "the local RAFT checkpoint (.pth) of flow_source=raft",
        rule(
            lambda v, s: bool(v) or not _raft_needs(s),
            "must name a RAFT checkpoint (a local .pth file) when data.flow_source=raft",
        ),
    )
    raft_iters: int = setting(12, "RAFT refinement steps", at_least(1))
    raft_amp: str = setting("fp32", "RAFT's precision", one_of(("fp32", "bf16", "fp16")))
    raft_chunk: int = setting(32, "frame pairs per RAFT call", at_least(1))
    on_bad_sample: str = setting(
        "fail",
        "a clip that cannot be read: fail (one line naming shard, video and frame) "
        "or skip (log, count, train on a substitute clip)",
        one_of(("fail", "skip")),
    )
    bad_sample_budget: int = setting(
        100, "skip fails once more samples than this were skipped in one epoch (all ranks)", at_least(0)
    )
    synth: SynthDataConfig = section(SynthDataConfig, "the synthetic world")

    def positives_mode(self) -> str:
        """Where positives are computed, chosen once from ``k``, ``flow_source`` and
        ``positives_on``: ``worker`` (in the DataLoader workers, from stored flows; always for
        k = 1), ``stored`` (on the training device from the stored flows the workers pass on) or
        ``raft`` (on the training device from flows estimated there from every frame)."""
        if self.k == 1 or self.flow_source == "none":  # no flow: the crop geometry alone, cheap in the workers
            return "worker"
        if self.flow_source != "shards":
            return "raft"
        return "stored" if self.positives_on == "device" else "worker"


@dataclass
class ModelConfig(Section):
    """The model (:class:`pixpro_of.model.pixpro.PixPro`); defaults are the seed's
    (docs/original-system.md §2.1, §2.8)."""

    KEY: ClassVar[str] = "model"
    arch: str = setting("resnet50", "the torchvision ResNet (C5 map 7×7 at 224)", one_of(ARCHS))
    proj_hidden: int = setting(4096, "the projector's hidden width (--feature-dim)", at_least(1))
    proj_dim: int = setting(256, "the projector's output width", at_least(1))
    ppm_layers: int = setting(
        1,
        "the PPM value transform: 0 identity, 1 conv1×1, 2 MLP (--pixpro-transform-layer)",
        rule(lambda v, s: v in (0, 1, 2), "must be 0, 1 or 2"),
    )
    ppm_gamma: float = setting(2.0, "the PPM similarity exponent (--pixpro-p)", above(0))
    momentum_base: float = setting(0.99, "the EMA momentum at step 0 (--pixpro-momentum)", within(0, 1))
    loss_norm: str = setting(
        "seed",
        "seed (the seed code's mean over all positive pairs of an image) or pixel (per query pixel, paper Eq. 2)",
        one_of(LOSS_NORMS),
    )


def _peak_lr(s) -> float:
    return s.root.lr()


@dataclass
class OptimConfig(Section):
    """LARS and the learning-rate schedule (seed §2.2): linear warm-up, then per-iteration cosine."""

    KEY: ClassVar[str] = "optim"
    base_lr: float = setting(
        1.0,
        "the peak lr is base_lr × global batch / 256",
        at_least(0, " (0: the weights never move, only BatchNorm statistics do)"),
    )
    weight_decay: float = setting(1e-5, "LARS weight decay", at_least(0))
    momentum: float = setting(0.9, "LARS momentum", within(0, 1, open_high=True))
    warmup_epochs: int = setting(
        5,
        "epochs of linear warm-up from lr / warmup_multiplier",
        rule(
            lambda v, s: 0 <= v < s.root.run.epochs,
            lambda s: f"must be in [0, run.epochs = {s.root.run.epochs})",
            when=lambda s: s.root is not None,
        ),
    )
    warmup_multiplier: float = setting(100.0, "the warm-up starts at lr / warmup_multiplier", at_least(1))
    eta_min: float = setting(
        1e-6,
        "the lr the cosine ends at",
        rule(
            lambda v, s: 0 <= v < _peak_lr(s) or v == _peak_lr(s) == 0,
            lambda s: (
                f"must be in [0, peak lr = {_peak_lr(s):g})" if _peak_lr(s) > 0 else "must be 0 when optim.base_lr is 0"
            ),
            when=lambda s: s.root is not None,
        ),
    )
    precision: str = setting(
        "fp32",
        "fp32, bf16 (autocast) or fp16 (autocast + GradScaler; Horovod's AMP recipe)",
        one_of(("fp32", "bf16", "fp16")),
    )
    tf32: bool = setting(
        True,
        "fp32 matmuls and convolutions on TF32 tensor cores of an Ampere+ GPU (false: IEEE fp32; no effect on CPU)",
    )
    channels_last: bool = setting(True, "the model and the device-built views in channels-last memory format")
    compile: bool = setting(False, "torch.compile the model")


@dataclass
class DistConfig(Section):
    """Which backend runs the ranks (``pixpro_of.dist``); it must match the launch: a trainer started
    as several ranks (mpirun, srun, torchrun) with ``single`` refuses to start."""

    KEY: ClassVar[str] = "dist"
    backend: str = setting("single", "single (one process), horovod or ddp", one_of(("single", "horovod", "ddp")))
    sync_bn: bool = setting(True, "synchronise BatchNorm statistics over the ranks")
    timeout_minutes: float = setting(
        30.0,
        "how long a DDP collective waits for the other ranks before failing (longer than the slowest legitimate wait)",
        above(0),
    )


@dataclass
class CheckpointConfig(Section):
    """Checkpoint cadence and retention; a checkpoint is also written whenever training stops. Rank 0
    writes from a host copy in a background thread; the ranks train on."""

    KEY: ClassVar[str] = "checkpoint"
    every_steps: int = setting(0, "write every N steps (0 = off)", at_least(0))
    every_epochs: int = setting(1, "write at the end of every N-th epoch (0 = off)", at_least(0))
    every_minutes: float = setting(
        0.0,
        "write at the first step boundary N minutes after the last (0 = off; rank 0's clock decides)",
        at_least(0, " (0 = off)"),
    )
    keep: int = setting(3, "the newest checkpoints kept", at_least(1))
    keep_epochs: List[int] = setting(
        [10, 100, 200, 500, 1000, 1500, 2000], "checkpoints written at the end of these epochs are never deleted"
    )


@dataclass
class StopConfig(Section):
    """When to stop early with a checkpoint (exit code 75): at the deadline, when the time left is
    below ``safety_factor`` × (step time + checkpoint time) + ``margin_s``, or on a signal."""

    KEY: ClassVar[str] = "stop"
    deadline: Optional[str] = setting(
        None,
        "a point in time (ISO 8601, @unix, T10:30) or a duration from start with "
        "a unit (90m, 1h30m); plumbing/parse.py",
        Grammar(lambda t: parse_deadline(t, now=0.0)),
    )
    margin_s: float = setting(30.0, "seconds kept in hand before the deadline", at_least(0))
    safety_factor: float = setting(1.5, "how many step + checkpoint times must fit before the deadline", at_least(1))
    signals: List[str] = setting(
        ["SIGUSR2", "SIGTERM", "SIGINT"],
        "signals that stop at the next step boundary (SIGINT: PBS's qsig -s INT, Ctrl-C)",
        Grammar(lambda n: signal_name(n, catchable=True), "must name catchable signals like SIGUSR2"),
    )


@dataclass
class LogConfig(Section):
    """Metrics to ``metrics.csv``, TensorBoard and wandb (rank 0)."""

    KEY: ClassVar[str] = "log"
    every_steps: int = setting(1, "log every N steps", at_least(1))
    tensorboard: bool = setting(True, "write TensorBoard events")
    csv: bool = setting(True, "write metrics.csv")
    wandb: str = setting(
        "off",
        "off, offline (RUN_DIR/wandb, upload later with wandb sync) or online (needs the wandb package)",
        one_of(("off", "offline", "online")),
    )
    wandb_project: str = setting("pixpro_of", "the wandb project")
    wandb_entity: str = setting("", "the wandb entity (user or team)")


@dataclass
class TrainConfig:
    """The whole training configuration; written to ``RUN_DIR/config.json``."""

    run: RunConfig = section(RunConfig, "global run settings")
    data: DataConfig = section(DataConfig, "clips and samples")
    model: ModelConfig = section(ModelConfig, "the model")
    optim: OptimConfig = section(OptimConfig, "LARS and the schedule")
    dist: DistConfig = section(DistConfig, "the backend")
    checkpoint: CheckpointConfig = section(CheckpointConfig, "checkpoint cadence and retention")
    stop: StopConfig = section(StopConfig, "stopping early")
    log: LogConfig = section(LogConfig, "metrics")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def lr(self) -> float:
        """The peak learning rate: base_lr × global batch / 256."""
        return self.optim.base_lr * self.data.batch_size / 256.0

    def validate(self) -> None:
        """Every float finite, then every field's checks; raises UserError naming the first bad key."""
        validate_tree(self)


def validate(cfg: TrainConfig) -> None:
    """Every float finite, then every field's checks; raises UserError naming the first bad key."""
    cfg.validate()
