"""Checkpoints written in the background from a host copy, the time cadence, TF32 from the config,
and Horovod's AMP order (issue 24, items 5 and 6)."""

from __future__ import annotations

import threading

import pytest
import torch
from test_train_support import make_trainer

from pixpro_of.train.checkpoint import BackgroundWriter, CheckpointStore, host_copy
from plumbing.runs import EXIT_FINISHED


class Gate:
    """Pickles only once ``open`` is set: holds a background write in the middle of its payload."""

    opened = threading.Event()
    started = threading.Event()

    def __reduce__(self):
        Gate.started.set()
        assert Gate.opened.wait(30)
        return (int, (7,))


def test_latest_names_the_old_checkpoint_until_the_background_write_is_complete(tmp_path):
    store = CheckpointStore(tmp_path, keep=5)
    store.save({"step": 1, "epoch": 0, "w": torch.ones(3)})
    w = BackgroundWriter(store)
    Gate.opened.clear(), Gate.started.clear()
    w.start({"step": 2, "epoch": 0, "w": torch.full((3,), 2.0), "gate": Gate()})
    assert Gate.started.wait(30) and w.pending
    assert store.latest_name() == "step_00000001.pt"
    state, info = store.load_latest()
    assert info.step == 1 and torch.equal(state["w"], torch.ones(3))
    with pytest.raises(RuntimeError, match="still pending"):
        w.start({"step": 3, "epoch": 0})
    Gate.opened.set()
    info, seconds = w.join()
    assert info.step == 2 and seconds > 0 and not w.pending and w.join() is None
    newest = store.entries()[0]
    assert store.latest_name() == "step_00000002.pt" and newest.step == 2 and store.verify(newest) is None


def test_a_failed_background_write_is_raised_by_join_and_leaves_the_previous_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save({"step": 1, "epoch": 0})
    w = BackgroundWriter(store)
    w.start({"step": 2, "epoch": 0, "bad": lambda: None})  # cannot be pickled: a bug, not a disk error
    with pytest.raises(Exception, match="pickle|lambda"):
        w.join()
    assert store.latest_name() == "step_00000001.pt" and not w.pending


def test_host_copy_owns_its_tensors():
    w = torch.arange(4.0).reshape(2, 2).to(memory_format=torch.contiguous_format)
    state = {"model": {"w": w}, "list": [w, 3], "tup": (w,), "n": 5}
    copy = host_copy(state)
    w.add_(100)
    assert torch.equal(copy["model"]["w"], torch.arange(4.0).reshape(2, 2))
    assert torch.equal(copy["list"][0], copy["tup"][0]) and copy["list"][1] == 3 and copy["n"] == 5
    assert copy["model"]["w"].untyped_storage().data_ptr() != w.untyped_storage().data_ptr()


@pytest.fixture
def torch_globals():
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


def test_checkpoint_every_minutes_writes_by_time_alone(tmp_path, torch_globals):
    off = ["checkpoint.every_steps=0", "checkpoint.every_epochs=0", "checkpoint.keep=100", "run.epochs=2"]
    run = tmp_path / "by_time"
    assert make_trainer(run, off + ["checkpoint.every_minutes=0.00001"]).run() == EXIT_FINISHED
    steps = sorted(e.step for e in CheckpointStore(run / "checkpoints").entries())
    assert steps == list(range(1, steps[-1] + 1)) and len(steps) > 3  # 0.6 ms: every step boundary
    run = tmp_path / "never"
    assert make_trainer(run, off).run() == EXIT_FINISHED
    assert [e.step for e in CheckpointStore(run / "checkpoints").entries()] == [steps[-1]]  # the final one only


def test_tf32_follows_the_config(tmp_path, torch_globals):
    from pixpro_of.train.precision import set_tf32, tf32_enabled

    try:
        for value in (False, True):
            t = make_trainer(tmp_path / str(value), [f"optim.tf32={str(value).lower()}"])
            t._configure_torch()
            assert tf32_enabled() is value
    finally:
        set_tf32(True)


def test_fp16_under_horovod_unscales_only_after_the_allreduce():
    hvd_backend = pytest.importorskip("pixpro_of.dist.horovod")
    order = []

    class FakeDistributed(torch.optim.SGD):
        def synchronize(self):
            order.append("synchronize")

        def skip_synchronize(self):
            class Ctx:
                def __enter__(self_):
                    order.append("skip_synchronize")

                def __exit__(self_, *exc):
                    order.append("end")

            return Ctx()

        def step(self, closure=None):
            order.append(f"step grad={float(p.grad):g}")
            return super().step(closure)

    p = torch.nn.Parameter(torch.ones(()))
    opt = FakeDistributed([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    (scaler.scale(p * 3.0)).backward()
    hvd_backend.HorovodBackend.optimizer_step(None, opt, scaler)
    assert order == ["synchronize", "skip_synchronize", "step grad=3", "end"]
    order.clear()
    off = torch.amp.GradScaler("cpu", enabled=False)
    hvd_backend.HorovodBackend.optimizer_step(None, opt, off)
    assert order == ["step grad=3"]  # no scaler: the DistributedOptimizer's own step
