"""Exact resume: kill -9 at random moments, signals and deadlines lose no step and change no bit.

The trainer runs with small doubles (tests/test_train_support.py) and the real LARS, LR schedule,
momentum schedule, checkpoints, sampler and stop logic; CPU, deterministic mode, one thread.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_support import make_trainer

from pixpro_of.train.checkpoint import CheckpointStore
from pixpro_of.train.metrics_log import read_csv
from pixpro_of.train.stopping import StopControl
from pixpro_of.train.trainer import Trainer
from plumbing.runs import EXIT_FINISHED, EXIT_RESUME

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "test_train_support.py"
TOTAL_STEPS = 24  # 12 videos / batch 2 = 6 steps per epoch, 4 epochs


@pytest.fixture
def torch_globals():
    """The trainer turns on deterministic mode and sets threads; restore them for other tests."""
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Final state of an uninterrupted run (in a subprocess, like the interrupted ones)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    rc = subprocess.run([sys.executable, str(DRIVER), str(run)], capture_output=True, text=True, timeout=300)
    assert rc.returncode == EXIT_FINISHED, rc.stderr[-2000:]
    return final_state(run)


def final_state(run: Path) -> dict:
    state, info = CheckpointStore(run / "checkpoints").load_latest()
    assert info.step == TOTAL_STEPS and (run / "done").exists()
    return state


def assert_identical(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"model tensor {k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]), f"optimizer buffer {k} differs"
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def logged_steps(run: Path):
    return [int(r["step"]) for r in read_csv(run / "metrics.csv")]


def start(run: Path, **env) -> subprocess.Popen:
    e = dict(os.environ, **{k: str(v) for k, v in env.items()})
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(run)], env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def wait_for_new_step(run: Path, proc: subprocess.Popen, after: int, timeout: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        try:
            if logged_steps(run) and logged_steps(run)[-1] > after:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)


@pytest.mark.slow
def test_kill9_at_random_moments_then_resume_is_bit_identical(tmp_path, reference):
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    run = tmp_path / "run"
    kills = 0
    for _ in range(4):
        before = logged_steps(run)[-1] if (run / "metrics.csv").exists() and logged_steps(run) else 0
        proc = start(run, TINY_STEP_SLEEP=0.03)
        wait_for_new_step(run, proc, before)
        time.sleep(rnd.uniform(0.0, 0.25))  # anywhere: in a step, in a checkpoint write, in logging
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 2, f"the run finished before it could be killed (seed {seed})"
    assert not (run / "done").exists()
    proc = start(run)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_FINISHED, err[-2000:]
    assert_identical(final_state(run), reference)
    # Every step logged exactly once although some were run twice.
    assert logged_steps(run) == list(range(1, TOTAL_STEPS + 1)), f"seed {seed}"


def test_signal_stops_at_the_next_step_boundary_exits_75_and_resumes_exactly(tmp_path, reference, torch_globals):
    run = tmp_path / "run"
    proc = start(run, TINY_SIGNAL_AT=5)  # SIGUSR2 arrives during the 6th step
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_RESUME, err[-2000:]
    assert "stopping at step 6: signal SIGUSR2" in err
    info = CheckpointStore(run / "checkpoints").entries()[0]
    assert info.step == 6 and not (run / "done").exists()
    assert logged_steps(run) == list(range(1, 7))
    assert make_trainer(run).run() == EXIT_FINISHED
    assert "resumed from step 6" in (run / "logs" / "train.log").read_text()
    assert_identical(final_state(run), reference)
    assert logged_steps(run) == list(range(1, TOTAL_STEPS + 1))


def test_external_sigterm_stops_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = start(run, TINY_STEP_SLEEP=0.05)
    wait_for_new_step(run, proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_RESUME, err[-2000:]
    steps = logged_steps(run)
    assert CheckpointStore(run / "checkpoints").entries()[0].step == steps[-1] >= 3


def test_a_configured_signal_replaces_the_defaults(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), str(run), "stop.signals=[SIGUSR1]"],
        env=dict(os.environ, TINY_STEP_SLEEP="0.05"),
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_new_step(run, proc, 1)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_RESUME and "signal SIGUSR1" in err


def test_deadline_stops_before_the_deadline_and_resumes_exactly(tmp_path, reference, torch_globals):
    class SlowTrainer(Trainer):
        def train_step(self, batch):
            out = super().train_step(batch)
            time.sleep(0.25)
            return out

    run = tmp_path / "run"
    deadline = time.time() + 5.0  # 24 steps need > 6 s
    stop = StopControl(deadline=deadline, margin_s=1.0, safety_factor=1.5, signals=[])
    no_ckpt = ["checkpoint.every_steps=0", "checkpoint.every_epochs=0"]  # only the stop writes one
    rc = make_trainer(run, no_ckpt, stop=stop, trainer_cls=SlowTrainer).run()
    assert rc == EXIT_RESUME and time.time() < deadline
    assert stop.reason.startswith("deadline:")
    entries = CheckpointStore(run / "checkpoints").entries()
    steps = logged_steps(run)
    assert len(entries) == 1 and entries[0].step == steps[-1] and 1 <= steps[-1] < TOTAL_STEPS
    rc = make_trainer(run, no_ckpt).run()
    assert rc == EXIT_FINISHED
    assert_identical(final_state(run), reference)
    assert logged_steps(run) == list(range(1, TOTAL_STEPS + 1))


def test_a_finished_run_exits_0_at_once(tmp_path, torch_globals):
    run = tmp_path / "run"
    assert make_trainer(run).run() == EXIT_FINISHED
    done = json.loads((run / "done").read_text())
    assert done["step"] == TOTAL_STEPS and done["checkpoint"] == "step_00000024.pt"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    t0 = time.time()
    assert make_trainer(run).run() == EXIT_FINISHED
    assert time.time() - t0 < 1.0
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing touched
    # Through the command line too: exit 0 without loading torch's model code.
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "pixpro_of", "train", "--config", "pixpro_k6", "--run-dir", str(run)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "finished already" in r.stderr


def test_a_damaged_newest_checkpoint_falls_back_and_the_run_still_ends_identical(tmp_path, reference, torch_globals):
    class SignalTrainer(Trainer):
        def train_step(self, batch):
            if self.step == 9:
                os.kill(os.getpid(), signal.SIGUSR2)
            return super().train_step(batch)

    run = tmp_path / "run"
    # Stop with checkpoints 9 and 10 on disk (keep=2).
    assert make_trainer(run, trainer_cls=SignalTrainer).run() == EXIT_RESUME
    store = CheckpointStore(run / "checkpoints")
    assert [e.step for e in store.entries()] == [10, 9]
    newest = store.entries()[0].path
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the payload
    newest.write_bytes(bytes(data))
    rc = make_trainer(run).run()
    assert rc == EXIT_FINISHED
    log = (run / "logs" / "train.log").read_text()
    assert "step_00000010.pt is damaged (crc32 mismatch)" in log and "resumed from step 9" in log
    assert_identical(final_state(run), reference)
    assert logged_steps(run) == list(range(1, TOTAL_STEPS + 1))


def test_resuming_with_a_different_config_is_refused(tmp_path, torch_globals):
    from plumbing.errors import UserError

    run = tmp_path / "run"
    assert make_trainer(run, ["run.max_steps=2"]).run() == EXIT_FINISHED
    (run / "done").unlink()
    with pytest.raises(
        UserError, match=r"config.json: this run was started with a different config \(optim.base_lr: 1.0 -> 0.5"
    ):
        make_trainer(run, ["run.max_steps=2", "optim.base_lr=0.5"]).run()


def test_batches_do_not_depend_on_the_number_of_workers():
    from test_train_support import TinyBuilder, TinyClips, tiny_collate

    from pixpro_of.data.sampler import ClipSampler
    from pixpro_of.train.data import EpochBatches, SampleSet, make_loader

    clips = TinyClips()
    order = ClipSampler(clips, seed=3, epoch=2).items()
    samples = SampleSet(clips, TinyBuilder(), seed=3)
    runs = []
    for workers in (0, 2):
        loader = make_loader(samples, EpochBatches(order, 2, 3, start_batch=1), tiny_collate, workers, 2, False, 3, 0)
        runs.append(list(loader))
    assert len(runs[0]) == 3  # 12 videos / 3 = 4 batches, from batch 1
    for a, b in zip(*runs):
        assert torch.equal(a.batch.view1, b.batch.view1) and torch.equal(a.batch.pos12, b.batch.pos12)
    # Resuming at batch 2 gives exactly the tail of the full epoch.
    tail = list(make_loader(samples, EpochBatches(order, 2, 3, start_batch=2), tiny_collate, 0, 2, False, 3, 0))
    assert torch.equal(tail[0].batch.view2, runs[0][1].batch.view2)
