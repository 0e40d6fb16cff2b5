"""``data.on_bad_sample`` (issue 14): ``fail`` names the bad sample; ``skip`` substitutes it, logs
and counts it, fails once ``data.bad_sample_budget`` is spent in an epoch, and keeps resume exact.

The trainer runs with the small doubles of tests/test_train_support.py; :class:`BadClips` makes
the clips of some videos unreadable (the reader's UserError), as a corrupt shard would.

Driver: ``python tests/test_faults_skip.py RUN_DIR [key=value ...]`` trains with ``BadClips``
(videos from env ``BAD_VIDEOS``, default 3,7) and exits with the trainer's code (2 with one line
on a failure); env ``TINY_STEP_SLEEP`` slows every step so a test can kill it at random moments.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_support import TinyBuilder, TinyClips, tiny_collate, tiny_components

from pixpro_of.train.checkpoint import CheckpointStore
from pixpro_of.train.components import FixedClips
from pixpro_of.train.data import BadSample, EpochBatches, SafeCollate, SampleSet, make_loader
from pixpro_of.train.failures import TrainingFailure
from pixpro_of.train.metrics_log import read_csv
from pixpro_of.train.trainer import Trainer
from plumbing.errors import UserError
from plumbing.runs import EXIT_FINISHED, EXIT_RESUME

HERE = Path(__file__).resolve().parent
DRIVER = Path(__file__).resolve()
TOTAL_STEPS = 24  # 12 videos / batch 2 = 6 steps per epoch, 4 epochs


class BadClips(TinyClips):
    """TinyClips whose videos in ``bad`` cannot be read (every t)."""

    def __init__(self, bad=(3, 7), **kw):
        super().__init__(**kw)
        self.bad = set(bad)

    def __getitem__(self, key):
        v, t = key
        if v in self.bad:
            raise UserError(f"shard-n000-00000.h5: video {self.video_name(v)!r} frame {t}: JPEG bytes fail their CRC32")
        return super().__getitem__(key)


def bad_components(bad=(3, 7)):
    parts = tiny_components()
    parts.clips = lambda cfg, run_dir: FixedClips(BadClips(bad=bad, k=cfg.data.k))
    return parts


def bad_trainer(run_dir, overrides=(), bad=(3, 7), trainer_cls=Trainer, stop=None):
    from test_train_support import TINY_OVERRIDES

    from pixpro_of.config import load_config

    cfg = load_config(None, TINY_OVERRIDES + list(overrides))
    return trainer_cls(cfg, run_dir, components=bad_components(bad), stop=stop)


@pytest.fixture
def torch_globals():
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- the sample set


def test_a_bad_clip_comes_back_as_a_record_or_a_deterministic_substitute():
    clips = BadClips(bad=(3,))
    key = (2, 5, 3, 1)  # epoch 2, position 5, video 3 (bad), t 1
    failed = SampleSet(clips, TinyBuilder(), seed=4)[key]
    rec = failed["_failed"]
    assert isinstance(rec, BadSample) and rec.skippable and failed["_bad"] == []
    assert (rec.epoch, rec.position, rec.video_index, rec.t) == (2, 5, 3, 1)
    assert rec.message == "shard-n000-00000.h5: video 'vid003' frame 1: JPEG bytes fail their CRC32"
    skipping = SampleSet(clips, TinyBuilder(), seed=4, substitutes=5)
    a, b = skipping[key], skipping[key]
    assert "_failed" not in a and [r.message for r in a["_bad"]] == [rec.message]
    assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["pos12"], b["pos12"])  # same substitute
    v, t, _ = skipping.substitute(2, 5, 1)
    assert v != 3 and 0 <= t <= clips.num_frames(v) - clips.k
    # Other positions get other substitutes; a good clip is untouched by the policy.
    assert skipping.substitute(2, 6, 1)[:2] != (v, t) or skipping.substitute(2, 7, 1)[:2] != (v, t)
    good = (2, 5, 4, 1)
    assert torch.equal(skipping[good]["view1"], SampleSet(clips, TinyBuilder(), seed=4)[good]["view1"])


def test_every_substitute_bad_fails_and_a_pipeline_bug_is_never_skipped():
    clips = BadClips(bad=set(range(12)))  # nothing readable
    item = SampleSet(clips, TinyBuilder(), seed=0, substitutes=3)[(0, 0, 1, 0)]
    assert len(item["_bad"]) == 3 and item["_failed"].skippable

    def broken(clip, rng):
        raise ValueError("shapes do not match")

    item = SampleSet(TinyClips(), broken, seed=0, substitutes=3)[(0, 0, 1, 0)]
    rec = item["_failed"]
    assert not rec.skippable and "ValueError: shapes do not match" in rec.message
    assert "Traceback" in rec.detail and item["_bad"] == []


def test_the_loader_passes_records_through_workers():
    clips = BadClips(bad=(3,))
    order = [(v, 0) for v in range(12)]
    samples = SampleSet(clips, TinyBuilder(), seed=1, substitutes=4)
    for workers in (0, 1):
        batches = list(make_loader(samples, EpochBatches(order, 0, 4), tiny_collate, workers, 2, False, 1, 0))
        bad = [r for b in batches for r in b.bad]
        assert [b.batch.view1.shape[0] for b in batches] == [4, 4, 4]
        assert len(bad) >= 1 and bad[0].video_index == 3 and bad[0].position == 3
    collate = SafeCollate(tiny_collate)
    out = collate([{"_failed": bad[0], "_bad": []}, samples[(0, 0, 0, 0)]])
    assert out.failed is bad[0] and out.batch is None


# --------------------------------------------------------------------------- the trainer


def test_fail_is_the_default_and_names_the_sample(tmp_path, torch_globals):
    with pytest.raises(TrainingFailure) as info:
        bad_trainer(tmp_path / "run").run()
    msg = str(info.value)
    assert re.fullmatch(
        r"shard-n000-00000\.h5: video 'vid00[37]' frame \d: JPEG bytes fail their CRC32 "
        r"\(epoch 0, batch \d; data\.on_bad_sample=skip would skip it\)",
        msg,
    ), msg
    assert "\n" not in msg


def test_skip_trains_on_substitutes_logs_and_counts_each_skip(tmp_path, torch_globals):
    run = tmp_path / "run"
    assert bad_trainer(run, ["data.on_bad_sample=skip", "data.bad_sample_budget=10"]).run() == EXIT_FINISHED
    rows = read_csv(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, TOTAL_STEPS + 1))
    skipped = [int(float(r["data/skipped"])) for r in rows]
    per_epoch = [sum(skipped[e * 6 : (e + 1) * 6]) for e in range(4)]
    assert all(n >= 2 for n in per_epoch), per_epoch  # videos 3 and 7 once per epoch, plus bad substitutes
    # data/skipped_epoch is the running count, reset each epoch
    for e in range(4):
        running = np.cumsum(skipped[e * 6 : (e + 1) * 6]).tolist()
        assert [int(float(r["data/skipped_epoch"])) for r in rows[e * 6 : (e + 1) * 6]] == running
    log = (run / "logs" / "train.log").read_text()
    lines = re.findall(r"skipped bad sample \(epoch (\d) sample (\d+)\): (.*)", log)
    assert len(lines) == sum(skipped)
    assert {m for _, _, m in lines} <= {
        f"shard-n000-00000.h5: video 'vid00{v}' frame {t}: JPEG bytes fail their CRC32"
        for v in (3, 7)
        for t in range(8)
    }


def test_the_budget_is_per_epoch_and_failing_names_the_count(tmp_path, torch_globals):
    with pytest.raises(TrainingFailure) as info:
        bad_trainer(tmp_path / "run", ["data.on_bad_sample=skip", "data.bad_sample_budget=1"]).run()
    msg = str(info.value)
    assert re.match(
        r"data\.bad_sample_budget=1 spent: [23] bad samples in epoch 0; the last: shard-n000-00000\.h5: "
        r"video 'vid00[37]' frame \d: JPEG bytes fail their CRC32$",
        msg,
    ), msg


class _StopAt(Trainer):
    stop_at = 0

    def train_step(self, batch):
        if self.step == self.stop_at:
            self.stop.signal_received = signal.SIGUSR2
        return super().train_step(batch)


def test_the_epoch_count_survives_a_resume(tmp_path, torch_globals):
    """Budget 2 with bad videos 3, 5, 8, 9: an uninterrupted run fails at some step of epoch 0; a
    run stopped after the first skip and resumed fails at the same step with the same count (a
    count reset on resume would let it go on)."""
    over = ["data.on_bad_sample=skip", "data.bad_sample_budget=2"]
    bad = (3, 5, 8, 9)
    ref = tmp_path / "ref"
    with pytest.raises(TrainingFailure) as info:
        bad_trainer(ref, over, bad).run()
    ref_msg, ref_rows = str(info.value), read_csv(ref / "metrics.csv")
    fail_step = len(ref_rows) + 1
    first_skip = next(int(r["step"]) for r in ref_rows if float(r["data/skipped"]) > 0)
    assert first_skip < fail_step, "the first skip and the failure must be in different steps"
    run = tmp_path / "run"
    _StopAt.stop_at = first_skip  # stop after the step holding the first skip
    assert bad_trainer(run, over, bad, trainer_cls=_StopAt).run() == EXIT_RESUME
    assert CheckpointStore(run / "checkpoints").entries()[0].step == first_skip + 1
    with pytest.raises(TrainingFailure) as info:
        bad_trainer(run, over, bad).run()
    assert str(info.value) == ref_msg
    assert read_csv(run / "metrics.csv") and len(read_csv(run / "metrics.csv")) == len(ref_rows)


# --------------------------------------------------------------------------- kill -9 and resume


def _final(run: Path) -> dict:
    state, info = CheckpointStore(run / "checkpoints").load_latest()
    assert info.step == TOTAL_STEPS and (run / "done").exists()
    return state


def _start(run: Path, **env) -> subprocess.Popen:
    e = dict(os.environ, **{k: str(v) for k, v in env.items()})
    e["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(HERE.parent)] + [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(run), "data.on_bad_sample=skip", "data.bad_sample_budget=10"],
        env=e,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _steps(run: Path):
    try:
        return [int(r["step"]) for r in read_csv(run / "metrics.csv")]
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.slow
def test_kill9_and_resume_with_skips_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    proc = _start(ref)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_FINISHED, err[-2000:]
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    run = tmp_path / "run"
    kills = 0
    for _ in range(4):
        before = (_steps(run) or [0])[-1]
        proc = _start(run, TINY_STEP_SLEEP=0.03)
        t0 = time.time()
        while proc.poll() is None and (_steps(run) or [0])[-1] <= before and time.time() - t0 < 120:
            time.sleep(0.02)
        time.sleep(rnd.uniform(0.0, 0.25))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 2, f"the run finished before it could be killed (seed {seed})"
    proc = _start(run)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_FINISHED, err[-2000:]
    a, b = _final(ref), _final(run)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after kill -9 + resume (seed {seed})"
    for k in a["optimizer"]["state"]:
        assert torch.equal(a["optimizer"]["state"][k]["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    ra, rb = read_csv(ref / "metrics.csv"), read_csv(run / "metrics.csv")
    assert [int(r["step"]) for r in rb] == list(range(1, TOTAL_STEPS + 1))
    assert [r["data/skipped"] for r in ra] == [r["data/skipped"] for r in rb]  # the same samples skipped


def _driver(argv) -> int:
    from plumbing.cli import user_error_types

    sleep = float(os.environ.get("TINY_STEP_SLEEP", "0"))
    bad = tuple(int(v) for v in os.environ.get("BAD_VIDEOS", "3,7").split(","))

    class SlowTrainer(Trainer):
        def train_step(self, batch):
            out = super().train_step(batch)
            time.sleep(sleep)
            return out

    try:
        return bad_trainer(argv[0], argv[1:], bad, trainer_cls=SlowTrainer).run()
    except user_error_types() as exc:
        print(f"pixpro_of train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_driver(sys.argv[1:]))
