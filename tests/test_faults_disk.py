"""A full disk and a read-only run directory (issue 14): one line naming the path and the bytes
needed, no temporary file left, the previous checkpoint stays the newest valid one, and the run
resumes bit-identically once space (or write access) is back.

The run directory lives on a small tmpfs mounted for the test (root needed; skipped with the
reason otherwise); the trainer runs in process with the small doubles of test_train_support.py.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from test_train_support import make_trainer

from pixpro_of.train.checkpoint import CheckpointStore
from pixpro_of.train.failures import TrainingFailure
from pixpro_of.train.trainer import Trainer
from plumbing.runs import EXIT_FINISHED, EXIT_RESUME

TOTAL_STEPS = 24


def _mount(path: Path, size: str, ro: bool = False, remount: bool = False) -> subprocess.CompletedProcess:
    opts = ("remount," if remount else "") + ("ro" if ro else "rw") + ("" if remount else f",size={size}")
    cmd = ["mount", "-o", opts, str(path)] if remount else ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture
def tmpfs(tmp_path):
    """A fresh 4 MiB tmpfs; unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = _mount(mnt, "4m")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()}); needs root and mount rights")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def torch_globals():
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    run = tmp_path_factory.mktemp("reference") / "run"
    assert make_trainer(run).run() == EXIT_FINISHED
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)
    return CheckpointStore(run / "checkpoints").load_latest()[0]


def fill(folder: Path, name: str = "filler") -> Path:
    """Write a file until the file system is full (down to its last byte); returns it."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 20, 64 << 10, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return path


def temporaries(run: Path):
    return [p for p in run.rglob("*") if p.name.startswith(".") and ".tmp." in p.name]


def assert_identical(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["optimizer"]["state"]:
        assert torch.equal(a["optimizer"]["state"][k]["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])


class FillBeforeCheckpoint(Trainer):
    """Fills the disk just before the checkpoint of step ``at`` is written."""

    at = 5

    def save_checkpoint(self, milestone: bool = False) -> None:
        if self.step == self.at and not (self.run_dir / "filler").exists():
            fill(self.run_dir)
        super().save_checkpoint(milestone)


def test_disk_full_during_a_checkpoint_then_resume(tmpfs, reference, torch_globals):
    run = tmpfs / "run"
    with pytest.raises(TrainingFailure) as info:
        make_trainer(run, trainer_cls=FillBeforeCheckpoint).run()
    msg = str(info.value)
    ck = run / "checkpoints"
    m = re.fullmatch(
        rf"{re.escape(str(ck))}/step_00000005\.pt: no space left on device while writing the checkpoint "
        rf"of step 5: needs (\d+) bytes \([0-9.]+ KiB\), (\d+) bytes free; free some space and run the "
        rf"same command again to resume",
        msg,
    )
    assert m, msg
    store = CheckpointStore(ck)
    previous = store.entries()[0]
    assert previous.step == 4 and store.latest_name() == "step_00000004.pt"
    assert int(m.group(1)) >= previous.size > int(m.group(2))  # what it needs vs what is free
    assert temporaries(run) == [] and not (ck / "step_00000005.pt").exists()
    assert store.load_latest()[1].step == 4  # still the newest valid one
    # Still full: a rerun fails again with one line, and leaves nothing behind either.
    with pytest.raises(TrainingFailure, match=r"no space left on device") as again:
        make_trainer(run).run()
    assert "\n" not in str(again.value) and temporaries(run) == []
    # Space back: the run resumes from step 4 and ends as if nothing happened.
    (run / "filler").unlink()
    assert make_trainer(run).run() == EXIT_FINISHED
    assert "resumed from step 4" in (run / "logs" / "train.log").read_text()
    assert_identical(store.load_latest()[0], reference)


def test_a_leftover_temporary_is_removed_before_config_json_is_rewritten(tmpfs, reference, torch_globals):
    """A writer killed mid-checkpoint on a full disk leaves a temporary file that holds the space:
    the rerun must remove it before it writes anything (here config.json changes)."""

    class StopAt6(Trainer):
        def train_step(self, batch):
            if self.step == 5:
                self.stop.signal_received = 12  # SIGUSR2
            return super().train_step(batch)

    run = tmpfs / "run"
    assert make_trainer(run, trainer_cls=StopAt6).run() == EXIT_RESUME
    fill(run / "checkpoints", ".step_00000007.pt.tmp.4242")  # what kill -9 mid-write on a full disk leaves
    assert make_trainer(run, ["stop.margin_s=1"]).run() == EXIT_FINISHED  # config.json rewritten: needs space
    assert temporaries(run) == []
    assert '"margin_s": 1.0' in (run / "config.json").read_text()
    assert_identical(CheckpointStore(run / "checkpoints").load_latest()[0], reference)


def test_read_only_run_dir_is_one_line_then_resumes(tmpfs, reference, torch_globals):
    class StopAt6(Trainer):
        def train_step(self, batch):
            if self.step == 5:
                self.stop.signal_received = 12
            return super().train_step(batch)

    run = tmpfs / "run"
    assert make_trainer(run, trainer_cls=StopAt6).run() == EXIT_RESUME
    r = _mount(tmpfs, "", ro=True, remount=True)
    assert r.returncode == 0, r.stderr
    try:
        with pytest.raises(TrainingFailure) as info:
            make_trainer(run).run()
    finally:
        _mount(tmpfs, "", ro=False, remount=True)
    assert re.fullmatch(
        rf"{re.escape(str(run))}/logs/train\.log: read-only file system while opening the log", str(info.value)
    ), str(info.value)
    assert make_trainer(run).run() == EXIT_FINISHED
    assert_identical(CheckpointStore(run / "checkpoints").load_latest()[0], reference)


def test_checkpoint_folder_turning_read_only_mid_run(tmpfs, reference, torch_globals):
    """The checkpoints folder on its own mount, made read-only between two saves (nothing is
    open for writing there then): the save names the path and the bytes it needed."""

    class ReadOnlyAt7(Trainer):
        def save_checkpoint(self, milestone: bool = False) -> None:
            if self.step == 7:
                r = _mount(self.run_dir / "checkpoints", "", ro=True, remount=True)
                assert r.returncode == 0, r.stderr
            super().save_checkpoint(milestone)

    run = tmpfs / "run"
    ck = run / "checkpoints"
    ck.mkdir(parents=True)
    r = _mount(ck, "2m")
    assert r.returncode == 0, r.stderr
    try:
        with pytest.raises(TrainingFailure) as info:
            make_trainer(run, trainer_cls=ReadOnlyAt7).run()
        assert re.fullmatch(
            rf"{re.escape(str(ck))}/step_00000007\.pt: read-only file system while writing the "
            rf"checkpoint of step 7 \(needs \d+ bytes \([0-9.]+ KiB\)\)",
            str(info.value),
        ), str(info.value)
        assert CheckpointStore(ck).load_latest()[1].step == 6 and temporaries(run) == []
        assert _mount(ck, "", ro=False, remount=True).returncode == 0
        assert make_trainer(run).run() == EXIT_FINISHED
        assert_identical(CheckpointStore(ck).load_latest()[0], reference)
    finally:
        subprocess.run(["umount", "-l", str(ck)], capture_output=True)
