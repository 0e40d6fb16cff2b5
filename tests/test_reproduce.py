"""``python -m pixpro_of reproduce``: every run through the launcher, end to end in miniature; the plan,
the GPU profile's dry run, where a run stands, the summary maths, and bad input."""

import json
import math
import os
import shlex
import subprocess
import sys

import pytest

from pixpro_of.reproduction import cli as rp
from pixpro_of.reproduction import data as rdata
from pixpro_of.reproduction import job as rjob
from pixpro_of.reproduction import plan, report
from plumbing.errors import UserError

TINY = [
    "--seeds",
    "0",
    "--videos",
    "4",
    "--video-frames",
    "6",
    "--size",
    "64x32",
    "--image-size",
    "64",
    "--eval-videos",
    "3",
    "--eval-val-videos",
    "1",
    "--eval-frames",
    "2",
    "--eval-every",
    "1",
    "--eval-size",
    "64x32",
    "--eval-iters",
    "3",
    "--eval-batch",
    "2",
    "--eval-crop",
    "32x64",
    "--prop-videos",
    "1",
    "--prop-frames",
    "3",
    "--prop-size",
    "64x32",
    "--poll",
    "1s",
]


def _cfg(argv=()):
    return rp.config_from_args(rp.parse_args(list(argv))).validate()


@pytest.mark.slow
def test_tiny_reproduction_through_the_launcher(tmp_path, capsys):
    """Random init and k = 6 without flow, one seed: a pretraining stopped by its time box and five
    evaluations, each a local launcher run; the table, pictures and results; a rerun redoes nothing."""
    out = tmp_path / "rep"
    argv = [
        "--out",
        str(out),
        *TINY,
        "--rows",
        "random,stats-only,k6-noflow",
        "--steps",
        "100000",
        "--time-box",
        "60s",
        "--eval-modes",
        "linear,deeplab,propagate",
        "--deeplab-rows",
        "random",
    ]
    assert rp.main(argv) == 0
    printed = capsys.readouterr().out

    table = (out / "table.md").read_text()
    assert table in printed
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| Method | Frames k | Flow | Mask | Views (C5 grid) | Pretrainings | Steps (mean)")
    assert "| Linear probe mIoU | DeepLabV3 mIoU | Label propagation mIoU (mean over distances) |" in lines[0]
    body = {ln.split(" | ")[0][2:]: ln.split(" | ") for ln in lines[1:4]}
    noflow = body["k=6 without flow (crop geometry only)"]
    assert noflow[1:5] == ["6", "none", "none", "64 px (2×2)"]
    assert noflow[5] == "1/1 (1 boxed)"  # the time box, not the step budget, ended it
    assert noflow[9] == "–"  # no DeepLabV3 head on that row (--deeplab-rows random)
    assert "Label propagation, mIoU by frame distance" in table

    res = json.loads((out / "results.json").read_text())
    assert res["failed"] == []
    runs = {r["name"]: r for r in res["runs"]}
    assert set(runs) == {
        "random-s0-linear",
        "random-s0-deeplab",
        "random-s0-propagate",
        "k6-noflow-s0",
        "k6-noflow-s0-linear",
        "k6-noflow-s0-propagate",
        "stats-only-s0",
        "stats-only-s0-linear",
        "stats-only-s0-propagate",
    }
    train = runs["k6-noflow-s0"]
    assert train["state"] == "time-boxed" and train["train"]["step"] > 0
    assert train["train"]["diagnostics"]["mask_ratio"] == 0.0
    assert train["train"]["diagnostics"]["weights_moved"] > 0.001
    # the floor: steps at a rate of exactly 0 leave the weights at the seed's random init
    stats = runs["stats-only-s0"]
    assert stats["state"] in plan.FINISHED and stats["train"]["step"] > 0
    assert stats["train"]["diagnostics"]["weights_moved"] == 0.0
    assert "run.max_steps=200" in stats["command"]  # its own budget, below --steps
    for name, r in runs.items():
        rd = out / ("runs" if r["kind"] == "train" else "eval") / name
        req = json.loads((rd / "job" / "request.json").read_text())  # a launcher run
        assert req["scheduler"] == "local" and req["run_dir"] == str(rd)
        assert (rd / "job" / "events.tsv").is_file()
        if r["kind"] == "eval":
            assert (rd / "done").is_file()
            scores = json.loads((rd / "scores.json").read_text())
            key = "mIoU_mean" if r["mode"] == "propagate" else "mIoU"
            assert r["mIoU"] == pytest.approx(scores[key])
    assert "data.flow_source=none" in train["command"]
    cfg = json.loads((out / "runs" / "k6-noflow-s0" / "config.json").read_text())
    cfg = cfg.get("config", cfg)
    assert (cfg["data"]["k"], cfg["data"]["flow_source"], cfg["data"]["mask"]) == (6, "none", "none")
    assert cfg["model"]["arch"] == "resnet18" and cfg["data"]["image_size"] == 64
    prop = json.loads((out / "eval" / "k6-noflow-s0-propagate" / "scores.json").read_text())
    assert len(prop["mIoU_per_distance"]) == 2
    for png in ("miou.png", "propagation.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000

    # Running again submits nothing and gives the same table.
    mtime = (out / "eval" / "k6-noflow-s0-linear" / "scores.json").stat().st_mtime
    assert rp.main(argv) == 0
    again = capsys.readouterr().out
    assert "done already" in again and "submitted" not in again
    assert (out / "table.md").read_text() == table
    assert (out / "eval" / "k6-noflow-s0-linear" / "scores.json").stat().st_mtime == mtime


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine where --eval-device cuda fails")
def test_a_failed_run_is_in_the_table(tmp_path, capsys):
    out = tmp_path / "rep"
    rc = rp.main(["--out", str(out), *TINY, "--rows", "random", "--eval-modes", "linear", "--eval-device", "cuda"])
    assert rc == 1
    assert "FAILED: random-s0-linear" in capsys.readouterr().err
    table = (out / "table.md").read_text()
    assert "| failed (1) |" in table and "- random-s0-linear: " in table
    res = json.loads((out / "results.json").read_text())
    assert res["runs"][0]["state"] == "failed"


def test_gpu_profile_dry_run_lists_every_row_with_resnet50_at_224(tmp_path, capsys):
    out = tmp_path / "dry"
    assert rp.main(["--profile", "gpu", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert not out.exists()  # nothing written, nothing submitted
    assert "resnet50, views 224 px (7x7 C5 grid)" in text
    cmds = [ln for ln in text.splitlines() if not ln.startswith("#")]
    trains = [c for c in cmds if "--trainer-command" not in c and "launcher.cli submit" in c]
    assert len(trains) == 3 * (len(plan.ROWS) - 1)  # every pretrained row x 3 seeds
    for row in plan.ROWS:
        for seed in (0, 1, 2):
            name = f"{row}-s{seed}"
            if plan.ROWS[row].k is not None:
                (c,) = [c for c in trains if f"--run-dir {out / 'runs' / name} " in c]
                words = shlex.split(c)
                assert "model.arch=resnet50" in words and "data.image_size=224" in words
                assert "run.device=cuda" in words and words[words.index("--gpus") + 1] == "1"
                assert words[words.index("--preset") + 1] == "pixpro_k6"
                assert words[words.index("--walltime") + 1] == "00:11:00"  # deadline = start + 10 min
            evals = [c for c in cmds if f"--run-dir {out / 'eval' / name}-" in c]
            modes = {"linear", "propagate"} | ({"deeplab"} if plan.ROWS[row].main else set())
            assert {m for m in modes if any(f"{name}-{m} " in c for c in evals)} == modes
            for c in evals:
                trainer = shlex.split(shlex.split(c)[shlex.split(c).index("--trainer-command") + 1])
                assert trainer[1:3] == ["-m", "pixpro_of.reproduction.job"]
                assert "--device" in trainer and trainer[trainer.index("--device") + 1] == "cuda"
                if row == "random":
                    assert trainer[trainer.index("--arch") + 1] == "resnet50"
    assert "--model dis" in text  # the DIS flow step is listed


def test_cluster_dry_run_passes_scheduler_options_through(tmp_path, capsys):
    assert (
        rp.main(
            [
                "--profile",
                "gpu",
                "--scheduler",
                "slurm",
                "--gpus",
                "8",
                "--group",
                "grp",
                "--queue",
                "gpu",
                "--rows",
                "k6",
                "--seeds",
                "0",
                "--dry-run",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    cmds = [shlex.split(ln) for ln in capsys.readouterr().out.splitlines() if "launcher.cli submit" in ln]
    train = [c for c in cmds if "--trainer-command" not in c]
    assert len(train) == 1
    w = train[0]
    assert w[w.index("--scheduler") + 1] == "slurm" and w[w.index("--gpus") + 1] == "8"
    assert w[w.index("--group") + 1] == "grp" and w[w.index("--queue") + 1] == "gpu"
    assert "LAUNCHER_LOCAL_SLOTS" not in " ".join(w) and "--ranks-per-node" not in w
    # the slurm profile's deadline margin is 600 s: the walltime keeps the 10-minute box
    assert w[w.index("--walltime") + 1] == "00:13:19"  # 799 - 799 // 4 = 600
    assert all(c[c.index("--gpus") + 1] == "1" for c in cmds if "--trainer-command" in c)


def test_default_plan_controls_grid_and_metrics():
    cfg = _cfg()
    assert cfg.profile == "cpu" and cfg.grid >= 4 and cfg.image_size >= 128
    assert cfg.rows == ("random", "stats-only", "k1", "k6-noflow", "k6", "k6-exact", "k2-nomask", "k2-mask")
    assert [(plan.ROWS[r].k, plan.ROWS[r].mask, plan.ROWS[r].flow) for r in cfg.rows[1:]] == [
        (1, "none", None),
        (1, "none", None),
        (6, "none", "none"),
        (6, "seed", "est"),
        (6, "seed", "gt"),
        (2, "none", "est"),
        (2, "seed", "est"),
    ]
    assert cfg.seeds == (0, 1, 2) and cfg.time_box_s == 360 and cfg.flow == "dis" and cfg.scheduler == "local"
    assert (cfg.steps, cfg.lr, cfg.batch_size) == (400, 1.0, 4)
    assert cfg.eval_modes == ("linear", "propagate")  # DeepLabV3 on request on the CPU profile
    assert not cfg.deeplab_for("k6")
    full = _cfg(["--eval-modes", "linear,deeplab,propagate"])
    assert [r for r in full.rows if full.deeplab_for(r)] == [
        "random",
        "stats-only",
        "k1",
        "k6-noflow",
        "k6",
        "k6-exact",
    ]
    assert full.modes_for("k2-mask") == ("linear", "propagate")
    gpu = _cfg(["--profile", "gpu"])
    assert (gpu.arch, gpu.image_size, gpu.grid, gpu.time_box_s, gpu.gpus) == ("resnet50", 224, 7, 600, 1)
    assert gpu.lr == 0 and gpu.eval_modes == ("linear", "deeplab", "propagate")
    assert _cfg(["--profile", "gpu", "--image-size", "160"]).image_size == 160  # options win over the profile
    assert _cfg(["--deeplab-rows", "none"]).deeplab_rows == ()


def test_which_shards_each_row_reads(tmp_path):
    cfg = _cfg(["--seeds", "0", "--eval-modes", "linear"])
    shards = rdata.shard_dirs(cfg, tmp_path)
    jobs = {j.name: j for j in plan.build_jobs(cfg, tmp_path, shards, tmp_path / "cs")}
    shard_of = {
        name: [w for w in j.submit if w.startswith("data.shards=")][0] for name, j in jobs.items() if j.kind == "train"
    }
    assert shard_of["k6-s0"].endswith("pretrain_dis]") and shard_of["k2-mask-s0"].endswith("pretrain_dis]")
    assert shard_of["k6-exact-s0"].endswith("pretrain_gt]") and shard_of["k6-noflow-s0"].endswith("pretrain_gt]")
    assert "data.flow_source=none" in jobs["k6-noflow-s0"].submit
    # the stats-only floor: learning rate exactly 0 (after any --train-set), its own short budget
    stats = jobs["stats-only-s0"].submit
    assert stats[-2:] == ["optim.base_lr=0", "optim.eta_min=0"] and "run.max_steps=200" in stats
    assert "data.k=1" in stats and "run.max_steps=400" in jobs["k1-s0"].submit
    # --lr is a per-step peak rate: optim.base_lr = lr x 256 / batch (1.0 at batch 4 -> 64); --train-set wins
    assert "optim.base_lr=64" in jobs["k6-s0"].submit
    cfg = _cfg(["--seeds", "0", "--lr", "0.5", "--batch-size", "8", "--train-set", "optim.warmup_epochs=2"])
    k6 = [j for j in plan.build_jobs(cfg, tmp_path, shards, tmp_path / "cs") if j.name == "k6-s0"][0].submit
    assert k6[-2:] == ["optim.base_lr=16", "optim.warmup_epochs=2"]
    gpu = _cfg(["--profile", "gpu", "--seeds", "0"])
    k6 = [j for j in plan.build_jobs(gpu, tmp_path, shards, tmp_path / "cs") if j.name == "k6-s0"][0].submit
    assert not any(w.startswith("optim.base_lr=") for w in k6)  # the seed's own rule on the GPU profile
    with pytest.raises(UserError, match=r"--lr must be >= 0"):
        _cfg(["--lr", "-1"])
    assert jobs["k6-s0-linear"].after == "k6-s0" and jobs["random-s0-linear"].after is None
    both = {j.name: j for j in plan.build_jobs(_cfg(["--seeds", "1"]), tmp_path, shards, tmp_path / "cs")}
    prop = shlex.split(both["random-s1-propagate"].submit[-1])
    assert prop[prop.index("--init-seed") + 1] == "1"  # the random row's weights are drawn per seed
    assert "--init-seed" not in both["k6-s1-propagate"].submit[-1]
    assert jobs["k6-s0"].env == {"LAUNCHER_LOCAL_SLOTS": "2", "LAUNCHER_LOCAL_SLOT_DIR": str(tmp_path / "slots")}


def test_walltime_keeps_the_box():
    local = _cfg()
    assert plan.walltime_for(local, 600) == 660  # local profile: 60 s margin
    w = plan.walltime_for(local, 30)
    assert w - min(60, w // 4) >= 30 and w - min(60, (w - 1) // 4) - 1 < 30


def _run_dir(tmp_path, name):
    rd = tmp_path / name
    (rd / "job").mkdir(parents=True)
    (rd / "job" / "request.json").write_text("{}")
    return rd


def test_job_state_from_the_run_directory(tmp_path):
    def job(rd, kind="train"):
        return plan.Job(rd.name, kind, "k1", 0, rd, [])

    assert plan.job_state(job(tmp_path / "none")) == ("new", "")
    rd = _run_dir(tmp_path, "running")
    (rd / "job" / "local.json").write_text(json.dumps({"state": "running", "pid": os.getpid()}))
    assert plan.job_state(job(rd))[0] == "running"
    rd = _run_dir(tmp_path, "done")
    (rd / "done").write_text("")
    assert plan.job_state(job(rd)) == ("done", "done marker")
    rd = _run_dir(tmp_path, "boxed")
    (rd / "job" / "stopped").write_text("timeout budget of 0 used up\n")
    assert plan.job_state(job(rd))[0] == "failed"  # no checkpoint: nothing to evaluate
    (rd / "checkpoints").mkdir()
    (rd / "checkpoints" / "latest").write_text("step_00000007.pt\n")
    assert plan.job_state(job(rd)) == ("time-boxed", "timeout budget of 0 used up")
    rd = _run_dir(tmp_path, "crashed")
    (rd / "job" / "stopped").write_text("trainer exited 2 in job local-1\n")
    assert plan.job_state(job(rd)) == ("failed", "trainer exited 2 in job local-1")
    rd = _run_dir(tmp_path, "ev")
    (rd / "job" / "local.json").write_text(json.dumps({"state": "failed", "pid": 1, "rc": 2}))
    state, detail = plan.job_state(job(rd, "eval"))
    assert state == "failed" and "without scores.json" in detail
    (rd / "scores.json").write_text("{}")
    assert plan.job_state(job(rd, "eval")) == ("done", "scores.json")


def test_eval_job_takes_the_launchers_words_off():
    words, run_dir = rjob.split_launcher_words(
        [
            "eval",
            "seg",
            "--backbone",
            "r",
            "--out",
            "/e",
            "--run-dir",
            "/e",
            "--deadline",
            "2026-01-01T00:00:00Z",
            "dist.backend=horovod",
        ]
    )
    assert words == ["eval", "seg", "--backbone", "r", "--out", "/e"] and run_dir == "/e"


def test_mean_and_sample_std():
    mean, std = report._mean_std([50.0, 52.0, 54.0])
    assert mean == pytest.approx(52.0) and std == pytest.approx(2.0)  # ddof = 1
    assert report._mean_std([47.5]) == (47.5, None)
    assert report._mean_std([]) == (None, None)
    assert report._cell({"mean": 52.0, "std": 2.0, "n": 3, "failed": 0, "pending": 0}) == "52.00 ± 2.00"
    assert report._cell({"mean": 47.5, "std": None, "n": 1, "failed": 1, "pending": 0}) == "47.50 (n=1), 1 failed"
    assert report._cell({"mean": None, "std": None, "n": 0, "failed": 2, "pending": 0}) == "failed (2)"


def test_schedule_and_durations():
    # 32 videos, batch 4: 8 steps an epoch; 2000 steps need 250 epochs, 401 need 51.
    assert plan.schedule_epochs(2000, 32, 4) == 250
    assert plan.schedule_epochs(401, 32, 4) == 51
    assert plan.schedule_epochs(3, 4, 4) == 3
    # durations are plumbing.parse's grammar (tests/test_parse.py); here a bare number, which was
    # seconds before, is refused rather than read as minutes
    args = rp.parse_args(["--time-box", "10m", "--eval-walltime", "1h30m", "--poll", "2.5m"])
    assert (args.time_box, args.eval_walltime) == (600, 5400) and math.isclose(args.poll, 150)
    with pytest.raises(UserError, match=r"--time-box.*'75' has no unit: write 75s or 75m"):
        rp.main(["--time-box", "75", "--dry-run"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rows", "k1,k9"], "--rows: unknown row 'k9'"),
        (["--eval-modes", "svm"], "--eval-modes: unknown mode 'svm'"),
        (["--deeplab-rows", "k7"], "--deeplab-rows: unknown row 'k7'"),
        (["--eval-seed", "100"], "--eval-seed 100: must differ from --data-seed"),
        (["--prop-seed", "1000"], "--prop-seed 1000: --data-seed, --eval-seed and --prop-seed must differ"),
        (["--rows", "k6", "--video-frames", "4"], "--video-frames 4: the k=6 row needs at least 6 frames"),
        (["--videos", "3"], "--videos 3: fewer than one batch of 4 clips"),
        (["--image-size", "100"], "--image-size must be a multiple of 32"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, argv, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace("+", r"\+")):
        rp.main(["--out", str(tmp_path / "o"), *argv])
    assert not (tmp_path / "o").exists()  # nothing written for bad input


def test_cli_prints_one_line_and_exits_2(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixpro_of",
            "reproduce",
            "--out",
            str(tmp_path / "o"),
            "--seeds",
            "0",
            "--rows",
            "nope",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown row 'nope'" in r.stderr
    assert "Traceback" not in r.stderr


def test_cluster_dry_run_submits_array_jobs_with_a_cap(tmp_path, capsys):
    """On a batch scheduler the runs go out as array jobs (one per kind and evaluation mode), each with its cap."""
    assert (
        rp.main(
            [
                "--profile",
                "gpu",
                "--scheduler",
                "slurm",
                "--gpus",
                "1",
                "--max-running",
                "3",
                "--rows",
                "random,k6",
                "--seeds",
                "0,1",
                "--dry-run",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    heads = [ln for ln in out.splitlines() if ln.startswith("# array ")]
    assert [h.split(":")[0] for h in heads] == [
        "# array eval-linear",
        "# array eval-deeplab",
        "# array eval-propagate",
        "# array train",
    ]
    assert "# array train: 2 tasks, at most 3 running at once, submitted at once" in heads[3]
    assert all("4 tasks, at most 3 running at once" in h for h in heads[:3])
    arrays = [shlex.split(ln) for ln in out.splitlines() if "launcher.cli array" in ln]
    assert len(arrays) == 4 and all(a[a.index("--max-running") + 1] == "3" for a in arrays)
    assert out.rstrip().endswith(
        "# 14 runs (2 pretrainings, 12 evaluations) as at least 4 array jobs, at most 3 tasks of each running at once"
    )
    assert not (tmp_path / "o").exists()  # a dry run writes nothing
