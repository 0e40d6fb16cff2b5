"""The reproduction's plan: its rows, profiles and settings, and the runs it submits (data: :mod:`.data`).

Every pretraining and every evaluation is one launcher run (``launcher submit``; the local
scheduler by default, a cluster's with ``--scheduler``): :func:`build_jobs` gives each its run
directory and its exact submit command, :func:`job_state` reads where it stands from the run
directory alone (so a rerun of ``reproduce`` skips what is finished and waits for what runs).
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from launcher.status import pid_alive
from plumbing.errors import UserError
from plumbing.runs import RunLayout


@dataclass(frozen=True)
class Row:
    """One row of the table: a pretraining configuration (``k`` None = no pretraining).

    ``flow``: which flow the positives follow: ``None`` (k ≤ 1, no pretraining), ``none`` (no flow:
    the crop geometry alone, ``data.flow_source=none``), ``est`` (the estimated flow, ``--flow``:
    OpenCV DIS by default) or ``gt`` (the synthetic world's exact flow). ``main`` rows also get
    the DeepLabV3 column by default (``--deeplab-rows main``). ``overrides`` are the row's own
    trainer settings; ``steps`` caps the row's step budget below ``--steps``.
    """

    name: str
    label: str
    k: Optional[int]
    mask: Optional[str]  # data.mask: none | seed (the seed's FB check)
    flow: Optional[str]
    seed_miou: Optional[float]  # the seed's reported mIoU on real Cityscapes (docs/original-system.md §3)
    main: bool = False
    overrides: Tuple[str, ...] = ()
    steps: Optional[int] = None


ROWS: Dict[str, Row] = {
    r.name: r
    for r in (
        Row("random", "Random init (no pretraining)", None, None, None, None, main=True),
        # the floor a pretraining has to beat: the trainer with a learning rate of exactly 0, so the
        # weights stay at their random init and only BatchNorm's running statistics see the views
        Row(
            "stats-only",
            "Random weights, BatchNorm statistics of the pretraining views (lr 0)",
            1,
            "none",
            None,
            None,
            main=True,
            overrides=("optim.base_lr=0", "optim.eta_min=0"),
            steps=200,
        ),
        Row("k1", "PixPro, k=1 (same frame)", 1, "none", None, 53.0, main=True),
        Row("k6-noflow", "k=6 without flow (crop geometry only)", 6, "none", "none", None, main=True),
        Row("k6", "PixPro + OF, k=6, estimated flow, FB mask", 6, "seed", "est", 53.4, main=True),
        Row("k6-exact", "k=6, exact flow, FB mask", 6, "seed", "gt", None, main=True),
        Row("k2-nomask", "Ablation k=2, no mask", 2, "none", "est", 48.37),
        Row("k2-mask", "Ablation k=2, FB mask", 2, "seed", "est", 48.71),
    )
}
EVAL_MODES = ("linear", "deeplab", "propagate")

#: Settings a profile changes (everything else is :class:`ReproduceConfig`'s default). ``cpu``:
#: this machine, ResNet-18 with 128-px views (a 4×4 C5 grid), a peak learning rate of 1.0 (see
#: ``lr``), 400 steps in a 6-minute box, the linear probe and label propagation. ``gpu``: one GPU
#: per pretraining, the seed's recipe (``pixpro_k6``: positives and view decoding on the GPU, its
#: own learning-rate rule) with ResNet-50 and the PixPro geometry (224-px views, a 7×7 C5 grid), a
#: 10-minute box each, and all three evaluations.
PROFILES: Dict[str, Dict[str, object]] = {
    "cpu": {},
    "gpu": dict(
        train_config="pixpro_k6",
        arch="resnet50",
        image_size=224,
        batch_size=64,
        steps=6000,
        lr=0.0,
        eval_modes=EVAL_MODES,
        time_box_s=600.0,
        gpus=1,
        threads=0,
        workers=8,
        device="cuda",
        videos=128,
        frames=16,
        size=(448, 224),
        prep_threads=8,
        eval_videos=24,
        eval_val_videos=6,
        eval_frames=12,
        eval_size=(448, 224),
        eval_iters=2000,
        eval_batch=16,
        eval_crop=(224, 448),
        eval_device="cuda",
        eval_workers=4,
        prop_videos=8,
        prop_frames=16,
        prop_size=(448, 224),
        jobs=1,
    ),
}


@dataclass
class ReproduceConfig:
    """Everything ``reproduce`` does. Sizes are width×height for frames, height×width for crops."""

    out: str = "reproduce_out"
    profile: str = "cpu"
    rows: Tuple[str, ...] = tuple(ROWS)
    seeds: Tuple[int, ...] = (0, 1, 2)
    # pretraining
    time_box_s: float = 360.0  # per pretraining (at most 10 minutes each)
    steps: int = 400  # step budget per pretraining; the LR/momentum schedules span it (fits the box here)
    # peak learning rate per step of each pretraining (optim.base_lr = lr × 256 / batch); 0 = the
    # trainer config's own rule, base_lr × batch / 256. The seed's rule gives 0.0156 at batch 4, at
    # which LARS (trust 0.001) moves the weights by 1.5 % in 800 steps and nothing is learnt beyond
    # BatchNorm statistics (docs/reproduction.md); 1.0 is the seed's base rate, unscaled.
    lr: float = 1.0
    train_config: str = "cpu_small"
    train_overrides: Tuple[str, ...] = ()
    arch: str = "resnet18"
    image_size: int = 128  # views; C5 grid = image_size / 32
    batch_size: int = 4  # global data.batch_size of the pretraining
    threads: int = 1  # run.threads (0 = torch's default)
    workers: int = 1  # data.num_workers
    device: str = "cpu"  # run.device
    videos: int = 32
    frames: int = 16
    size: Tuple[int, int] = (256, 128)
    data_seed: int = 100
    flow: str = "dis"  # the estimated flow of the "est" rows: dis (OpenCV DIS on the packed frames) | gt
    prep_threads: int = 1
    # evaluation
    # DeepLabV3 is on request on the CPU profile (--eval-modes linear,deeplab,propagate): its 18
    # heads add about 30 minutes at 2 at a time here (docs/reproduction.md records all three)
    eval_modes: Tuple[str, ...] = ("linear", "propagate")
    deeplab_rows: Tuple[str, ...] = ("main",)  # rows with the DeepLabV3 column: names, "main" or "all"
    eval_videos: int = 12
    eval_val_videos: int = 3
    eval_frames: int = 12
    eval_every: int = 2
    eval_size: Tuple[int, int] = (256, 128)
    eval_seed: int = 1000
    eval_iters: int = 300
    eval_batch: int = 8
    eval_crop: Tuple[int, int] = (128, 256)
    eval_lr: float = 0.01
    eval_device: str = "cpu"
    eval_workers: int = 0
    prop_videos: int = 4
    prop_frames: int = 12
    prop_size: Tuple[int, int] = (256, 128)
    prop_seed: int = 2000
    # execution (the launcher)
    scheduler: str = "local"
    cluster: Optional[str] = None
    profile_dir: Optional[str] = None
    group: str = ""
    queue: Optional[str] = None
    gpus: int = 0  # per pretraining; 0 = one CPU rank
    jobs: int = 2  # local scheduler: runs at once on this machine (slots)
    max_running: int = 4  # batch schedulers: tasks of one array job running at once (0 = no cap)
    eval_walltime_s: float = 4 * 3600.0
    poll_s: float = 5.0
    wait: bool = True
    dry_run: bool = False

    @property
    def grid(self) -> int:
        """The side of the C5 feature grid of a view (stride 32)."""
        return self.image_size // 32

    def deeplab_for(self, row: str) -> bool:
        if "deeplab" not in self.eval_modes:
            return False
        sel = set(self.deeplab_rows)
        return "all" in sel or row in sel or ("main" in sel and ROWS[row].main)

    def modes_for(self, row: str) -> Tuple[str, ...]:
        return tuple(m for m in self.eval_modes if m != "deeplab" or self.deeplab_for(row))

    def validate(self) -> "ReproduceConfig":
        if self.profile not in PROFILES:
            raise UserError(f"--profile: unknown profile {self.profile!r}; choose from {', '.join(PROFILES)}")
        bad = [r for r in self.rows if r not in ROWS]
        if bad or not self.rows:
            raise UserError(f"--rows: unknown row {bad[0] if bad else '(none given)'!r}; choose from {', '.join(ROWS)}")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise UserError(f"--seeds: need one or more non-negative integers, got {list(self.seeds)}")
        bad = [m for m in self.eval_modes if m not in EVAL_MODES]
        if bad or not self.eval_modes:
            raise UserError(
                f"--eval-modes: unknown mode {bad[0] if bad else '(none given)'!r}; choose from {', '.join(EVAL_MODES)}"
            )
        bad = [r for r in self.deeplab_rows if r not in ROWS and r not in ("main", "all", "none")]
        if bad:
            raise UserError(f"--deeplab-rows: unknown row {bad[0]!r}; give row names, main, all or none")
        if self.flow not in ("dis", "gt"):
            raise UserError(f"--flow must be dis or gt, got {self.flow!r}")
        for name in (
            "steps",
            "videos",
            "frames",
            "eval_videos",
            "eval_frames",
            "eval_every",
            "eval_iters",
            "eval_batch",
            "jobs",
            "batch_size",
            "prop_videos",
            "prep_threads",
        ):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("threads", "workers", "gpus", "eval_workers", "max_running"):
            if int(getattr(self, name)) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.prop_frames < 2:
            raise UserError(
                f"--prop-frames must be >= 2 (a first frame and one to propagate to), got {self.prop_frames}"
            )
        if self.image_size < 32 or self.image_size % 32:
            raise UserError(f"--image-size must be a multiple of 32 (the C5 stride), got {self.image_size}")
        if not self.lr >= 0:
            raise UserError(f"--lr must be >= 0 (0 = the trainer config's own rule), got {self.lr}")
        if not self.time_box_s > 0:
            raise UserError(f"--time-box must be > 0, got {self.time_box_s}")
        if not self.eval_walltime_s > 0:
            raise UserError(f"--eval-walltime must be > 0, got {self.eval_walltime_s}")
        if not self.poll_s > 0:
            raise UserError(f"--poll must be > 0, got {self.poll_s}")
        ks = [ROWS[r].k for r in self.rows if ROWS[r].k]
        if ks and self.frames < max(ks):
            raise UserError(
                f"--video-frames {self.frames}: the k={max(ks)} row needs at least {max(ks)} frames per video"
            )
        if self.videos // self.batch_size < 1:
            raise UserError(f"--videos {self.videos}: fewer than one batch of {self.batch_size} clips per epoch")
        if not 1 <= self.eval_val_videos < self.eval_videos:
            raise UserError(f"--eval-val-videos must be in 1..{self.eval_videos - 1}, got {self.eval_val_videos}")
        if len({self.data_seed, self.eval_seed, self.prop_seed}) < 3:
            raise UserError(
                f"--prop-seed {self.prop_seed}: --data-seed, --eval-seed and --prop-seed must differ so the "
                f"pretraining videos and the evaluation scenes are disjoint"
            )
        return self


def profile_defaults(profile: str) -> Dict[str, object]:
    """:class:`ReproduceConfig`'s defaults under ``profile`` (one-line error for an unknown one)."""
    if profile not in PROFILES:
        raise UserError(f"--profile: unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    d = {f.name: getattr(ReproduceConfig(), f.name) for f in fields(ReproduceConfig)}
    d.update(PROFILES[profile])
    d["profile"] = profile
    return d


# ----------------------------------------------------------------------------- runs


def schedule_epochs(steps: int, videos: int, batch_size: int) -> int:
    """Epochs whose schedule covers ``steps`` optimizer steps (an epoch = one clip per video, global batch)."""
    return max(1, math.ceil(steps / max(1, videos // batch_size)))


@dataclass
class Job:
    """One launcher run: a pretraining (``kind`` train) or an evaluation (``kind`` eval)."""

    name: str  # row-s<seed> (train) or row-s<seed>-<mode> (eval)
    kind: str
    row: str
    seed: int
    run_dir: Path
    submit: List[str]  # the exact ``launcher submit`` command
    env: Dict[str, str] = field(default_factory=dict)  # added to the environment of the submit command
    mode: Optional[str] = None
    after: Optional[str] = None  # the train job an evaluation needs

    def shell(self) -> str:
        """The submit command as one shell line (environment first)."""
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [shlex.join(self.submit)])


def walltime_for(cfg: ReproduceConfig, box_s: float) -> int:
    """The walltime (s) whose trainer deadline (walltime − the profile's margin, ``launcher.request``) is ``box_s``."""
    from launcher.clusters import DEFAULT_PROFILE, load_profile

    prof = load_profile(cfg.cluster or DEFAULT_PROFILE[cfg.scheduler], cfg.profile_dir)
    box = int(math.ceil(box_s))
    margin = prof.deadline_margin_s
    if box >= 3 * margin:  # margin = min(profile margin, walltime // 4)
        return box + margin
    w = box
    while w - w // 4 < box:
        w += 1
    return w


def _launcher_head(cfg: ReproduceConfig, name: str, run_dir: Path, gpus: int, walltime_s: int) -> List[str]:
    from launcher.clusters import format_hms

    argv = [sys.executable, "-m", "launcher.cli", "submit", "--scheduler", cfg.scheduler]
    if cfg.cluster:
        argv += ["--cluster", cfg.cluster]
    if cfg.profile_dir:
        argv += ["--profile-dir", cfg.profile_dir]
    if cfg.group:
        argv += ["--group", cfg.group]
    if cfg.queue is not None:
        argv += ["--queue", cfg.queue]
    argv += ["--gpus", str(gpus)]
    if gpus == 0:
        argv += ["--nodes", "1", "--ranks-per-node", "1"]
    # --max-timeouts 0: a run that reaches its time box ends there (its checkpoint is the result)
    argv += [
        "--name",
        f"reproduce-{name}",
        "--run-dir",
        str(run_dir),
        "--walltime",
        format_hms(walltime_s),
        "--max-timeouts",
        "0",
    ]
    return argv


def build_jobs(cfg: ReproduceConfig, out: Path, shards: Dict[str, Path], cs_root: Path) -> List[Job]:
    """Every run of the plan, pretrainings before the evaluations that need them."""
    py = sys.executable
    env = (
        {"LAUNCHER_LOCAL_SLOTS": str(cfg.jobs), "LAUNCHER_LOCAL_SLOT_DIR": str(out / "slots")}
        if cfg.scheduler == "local"
        else {}
    )
    train_wall = walltime_for(cfg, cfg.time_box_s)
    eval_wall = int(math.ceil(cfg.eval_walltime_s))
    eval_gpus = 1 if cfg.gpus > 0 else 0
    config_flag = (
        ["--config", str(Path(cfg.train_config).resolve())]
        if Path(cfg.train_config).is_file()
        else ["--preset", cfg.train_config]
    )
    lr_words = [f"optim.base_lr={cfg.lr * 256.0 / cfg.batch_size:g}"] if cfg.lr > 0 else []
    jobs: List[Job] = []
    for row_name in cfg.rows:
        row = ROWS[row_name]
        for seed in cfg.seeds:
            rid = f"{row_name}-s{seed}"
            run_dir = out / "runs" / rid
            if row.k is not None:
                kind = "gt" if row.flow in ("gt", "none", None) or cfg.flow == "gt" else "dis"
                data = [
                    f"data.shards=[{shards.get(kind, out / 'data' / ('pretrain_' + kind))}]",
                    "data.synthetic=false",
                    f"data.k={row.k}",
                    f"data.mask={row.mask}",
                ]
                if row.flow == "none":
                    data.append("data.flow_source=none")
                steps = min(cfg.steps, row.steps or cfg.steps)
                cmd = (
                    _launcher_head(cfg, rid, run_dir, cfg.gpus, train_wall)
                    + config_flag
                    + [
                        "--global-batch",
                        str(cfg.batch_size),
                        *data,
                        f"model.arch={cfg.arch}",
                        f"data.image_size={cfg.image_size}",
                        f"run.seed={seed}",
                        f"run.epochs={schedule_epochs(steps, cfg.videos, cfg.batch_size)}",
                        f"run.max_steps={steps}",
                        f"run.threads={cfg.threads}",
                        f"run.device={cfg.device}",
                        f"data.num_workers={cfg.workers}",
                        "checkpoint.every_epochs=0",
                        "checkpoint.every_steps=0",
                        "checkpoint.keep=1",
                        "log.tensorboard=false",
                        *lr_words,
                        *cfg.train_overrides,
                        *row.overrides,
                    ]
                )  # the row's own settings win
                jobs.append(Job(rid, "train", row_name, seed, run_dir, cmd, dict(env)))
            backbone = ["--backbone", "random", "--arch", cfg.arch] if row.k is None else ["--backbone", str(run_dir)]
            for mode in cfg.modes_for(row_name):
                eid = f"{rid}-{mode}"
                ev = out / "eval" / eid
                if mode == "propagate":
                    words = [
                        "eval",
                        "propagate",
                        *backbone,
                        "--out",
                        str(ev),
                        "--videos",
                        str(cfg.prop_videos),
                        "--video-frames",
                        str(cfg.prop_frames),
                        "--size",
                        f"{cfg.prop_size[0]}x{cfg.prop_size[1]}",
                        "--seed",
                        str(cfg.prop_seed),
                        "--device",
                        cfg.eval_device,
                    ]
                    if row.k is None:  # random weights: each seed its own draw, as in the linear probe
                        words += ["--init-seed", str(seed)]
                else:
                    words = [
                        "eval",
                        "seg",
                        *backbone,
                        "--data",
                        str(cs_root),
                        "--mode",
                        mode,
                        "--out",
                        str(ev),
                        "--iters",
                        str(cfg.eval_iters),
                        "--batch",
                        str(cfg.eval_batch),
                        "--crop",
                        f"{cfg.eval_crop[0]}x{cfg.eval_crop[1]}",
                        "--lr",
                        str(cfg.eval_lr),
                        "--warmup-iters",
                        str(max(1, cfg.eval_iters // 10)),
                        "--workers",
                        str(cfg.eval_workers),
                        "--device",
                        cfg.eval_device,
                        "--seed",
                        str(seed),
                        "--log-every",
                        "50",
                    ]
                trainer = shlex.join([py, "-m", "pixpro_of.reproduction.job", *words])
                cmd = _launcher_head(cfg, eid, ev, eval_gpus, eval_wall) + ["--trainer-command", trainer]
                jobs.append(
                    Job(
                        eid,
                        "eval",
                        row_name,
                        seed,
                        ev,
                        cmd,
                        dict(env),
                        mode=mode,
                        after=rid if row.k is not None else None,
                    )
                )
    return jobs


# ----------------------------------------------------------------------------- where a run stands

#: States of a run: ``new`` (not submitted), ``running`` (submitted, not ended), ``done`` (the
#: ``done`` marker; for a pretraining also ``time-boxed``: stopped at its box with a checkpoint),
#: ``failed``.
FINISHED = ("done", "time-boxed")


def job_state(job: Job) -> Tuple[str, str]:
    """(state, detail) of a run, read from its run directory."""
    layout = RunLayout(job.run_dir)
    if job.kind == "eval" and (job.run_dir / "scores.json").is_file():
        return "done", "scores.json"
    if job.kind == "train" and layout.is_done():
        return "done", "done marker"
    if not (layout.job / "request.json").is_file():
        return "new", ""
    stopped = layout.job / "stopped"
    reason = stopped.read_text().strip().splitlines()[0] if stopped.is_file() and stopped.read_text().strip() else ""
    if reason:
        if job.kind == "train" and reason.startswith("timeout budget") and layout.latest_checkpoint() is not None:
            return "time-boxed", reason
        return "failed", reason
    local = layout.job / "local.json"
    if local.is_file():
        try:
            st = json.loads(local.read_text())
        except ValueError:
            return "running", "local.json being written"
        state = st.get("state")
        if state in ("finished", "failed", "cancelled"):
            if job.kind == "eval":  # ended without scores.json
                return "failed", f"{state} (exit {st.get('rc')}) without scores.json; log {layout.logs / 'run.log'}"
            return "failed", f"{state} (exit {st.get('rc')}) without a done marker; log {layout.logs / 'run.log'}"
        pid = int(st.get("pid", 0) or 0)
        if pid and not pid_alive(pid):
            return "failed", "the local runner died"
        return "running", str(state)
    return "running", "submitted"


def train_result(run_dir: Path) -> Dict:
    """Steps, epoch, checkpoint and wall seconds of a pretraining (what its run directory says)."""
    layout = RunLayout(run_dir)
    out: Dict = {}
    ckpt = layout.latest_checkpoint()
    if ckpt is not None and ckpt.with_suffix(".json").is_file():
        try:
            side = json.loads(ckpt.with_suffix(".json").read_text())
            out.update(step=int(side["step"]), epoch=int(side["epoch"]), checkpoint=str(ckpt))
        except (OSError, ValueError, KeyError):
            pass  # an unreadable side file only leaves the step out; the events below still give the state
    events = layout.job / "events.tsv"
    if events.is_file():
        from datetime import datetime

        times = []
        for line in events.read_text().splitlines():
            try:
                times.append(datetime.strptime(line.split("\t")[0], "%Y-%m-%dT%H:%M:%SZ").timestamp())
            except ValueError:
                continue
        if len(times) >= 2:
            out["seconds"] = max(times) - min(times)
    return out


# ----------------------------------------------------------------------------- array jobs (batch schedulers)


def array_batches(jobs: List[Job]) -> List[Tuple[str, List[Job]]]:
    """Jobs of one kind and mode in submission order, each group one array job (same resources):
    ``(array name, its jobs)``."""
    groups: Dict[str, List[Job]] = {}
    for j in jobs:
        groups.setdefault(j.kind if j.kind == "train" else f"eval-{j.mode}", []).append(j)
    return list(groups.items())


def array_command(cfg: ReproduceConfig, out: Path, name: str, batch: List[Job]) -> Tuple[List[str], Path, dict]:
    """``launcher array`` for ``batch`` (each job's ``launcher submit`` words a task): (command, tasks file,
    its JSON)."""
    stamp = f"{name}-{batch[0].name}"
    tasks_file = out / "arrays" / f"{stamp}.json"
    spec = {"tasks": [j.submit[4:] for j in batch]}  # after PYTHON -m launcher.cli submit
    cmd = [
        sys.executable,
        "-m",
        "launcher.cli",
        "array",
        str(tasks_file),
        "--max-running",
        str(cfg.max_running),
        "--name",
        f"reproduce-{name}",
        "--dir",
        str(out / "arrays" / stamp),
    ]
    return cmd, tasks_file, spec
