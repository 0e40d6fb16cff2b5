"""The backend interface (single process), precision modes and the run directory's logs."""

from __future__ import annotations

import sys

import pytest
import torch
from test_train_support import make_trainer

from pixpro_of.dist.backend import Backend, SingleProcessBackend, make_backend, register_backend
from pixpro_of.train.checkpoint import CheckpointStore
from pixpro_of.train.metrics_log import read_csv
from plumbing.errors import UserError


@pytest.fixture
def torch_globals():
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


def test_single_backend_is_one_rank_with_identity_collectives():
    be = make_backend("single", device="cpu")
    assert isinstance(be, SingleProcessBackend)
    assert (be.rank, be.world_size, be.local_rank, be.local_size, be.is_main) == (0, 1, 0, 1, True)
    assert be.device == torch.device("cpu")
    t = torch.arange(4.0)
    r = be.allreduce(t, op="sum")
    assert torch.equal(r, t) and r.data_ptr() != t.data_ptr()  # a new tensor, as collectives return
    assert be.broadcast(t, 0) is t and be.broadcast_object({"a": 1}) == {"a": 1}
    be.barrier()
    with pytest.raises(ValueError, match="source rank 1 does not exist"):
        be.broadcast(t, 1)
    with pytest.raises(ValueError, match="op must be 'mean' or 'sum'"):
        be.allreduce(t, op="max")
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    assert be.convert_sync_batchnorm(m) is m and be.wrap_model(m) is m and be.unwrap(m) is m
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    assert be.wrap_optimizer(opt, m) is opt


def test_unknown_backend_is_a_user_error_and_new_ones_can_register():
    with pytest.raises(UserError, match=r"dist.backend='mpi-magic' is not available \(available: .*single"):
        make_backend("mpi-magic")

    class TwoRanks(SingleProcessBackend):
        name = "fake2"

        @property
        def world_size(self):
            return 2

    register_backend("fake2", TwoRanks)
    try:
        be = make_backend("fake2", device="cpu")
        assert isinstance(be, Backend) and be.world_size == 2
    finally:
        from pixpro_of.dist import backend as mod

        mod.BACKENDS.pop("fake2")


def test_batch_must_split_evenly_over_ranks(tmp_path, torch_globals):
    class ThreeRanks(SingleProcessBackend):
        @property
        def world_size(self):
            return 3

    from test_train_support import TINY_OVERRIDES, tiny_components

    from pixpro_of.config import load_config
    from pixpro_of.train.trainer import Trainer

    cfg = load_config(None, TINY_OVERRIDES)
    t = Trainer(cfg, tmp_path / "run", backend=ThreeRanks(device="cpu"), components=tiny_components())
    with pytest.raises(UserError, match="data.batch_size=2 is not divisible by the 3 ranks"):
        t.run()


def test_batch_larger_than_the_data_is_a_user_error(tmp_path, torch_globals):
    with pytest.raises(UserError, match=r"data.batch_size=64 needs at least 64 videos per rank but the shards hold 12"):
        make_trainer(tmp_path / "run", ["data.batch_size=64"]).run()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_modes_train_and_checkpoint_the_scaler(tmp_path, precision, torch_globals):
    run = tmp_path / "run"
    assert make_trainer(run, [f"optim.precision={precision}", "run.max_steps=3"]).run() == 0
    state, info = CheckpointStore(run / "checkpoints").load_latest()
    assert info.step == 3
    rows = read_csv(run / "metrics.csv")
    assert all(-4.0 <= float(r["loss"]) <= 0.0 for r in rows)
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0  # GradScaler state is in the checkpoint
    else:
        assert not state["scaler"]  # no scaler for bf16


def test_metrics_hold_the_seed_keys_and_the_time_split(tmp_path, torch_globals):
    run = tmp_path / "run"
    assert make_trainer(run, ["run.max_steps=7", "log.tensorboard=true"]).run() == 0
    rows = read_csv(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 8))
    assert [int(r["epoch"]) for r in rows] == [0] * 6 + [1]
    for key in (
        "loss",
        "loss/plus",
        "lr",
        "momentum",
        "positive_pair/num",
        "positive_pair/avg",
        "mask_ratio",
        "time/data",
        "time/compute",
        "time/step",
    ):
        assert key in rows[0], key
    r = rows[0]
    assert float(r["loss/plus"]) == pytest.approx(float(r["loss"]) + 4)
    assert float(r["momentum"]) == 0.99  # step 0 of the cosine schedule
    assert float(r["lr"]) == pytest.approx(2 / 256 / 100)  # warm-up starts at lr/100 (batch 2)
    assert float(r["time/step"]) == pytest.approx(float(r["time/data"]) + float(r["time/compute"]))
    assert float(rows[-1]["momentum"]) > 0.99
    # TensorBoard got the same scalars.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    assert {"loss", "lr", "momentum", "time/data", "time/compute"} <= set(ea.Tags()["scalars"])
    assert [e.step for e in ea.Scalars("loss")] == list(range(1, 8))
    # The run directory layout (ARCHITECTURE.md "Runs").
    assert (run / "config.json").exists() and (run / "logs" / "train.log").exists()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000007.pt"
    assert (run / "done").exists()


class FakeWandb:
    """Records what the trainer asks of wandb (the package is optional and not installed here)."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], 0
        self.util = type("util", (), {"generate_id": staticmethod(lambda: "abc123")})

    def init(self, **kw):
        self.inits.append(kw)
        return self

    def log(self, row, step):
        self.logged.append((step, row))

    def finish(self):
        self.finished += 1


def test_wandb_offline_logs_every_row_to_one_run_across_jobs(tmp_path, monkeypatch, torch_globals):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tmp_path / "run"
    opts = ["log.wandb=offline", "log.wandb_project=proj", "run.max_steps=3"]
    assert make_trainer(run, opts).run() == 0
    (run / "done").unlink()
    assert make_trainer(run, opts[:2] + ["run.max_steps=5"]).run() == 0
    assert [kw["id"] for kw in fake.inits] == ["abc123", "abc123"]  # one wandb run for the whole run
    first = fake.inits[0]
    assert first["mode"] == "offline" and first["project"] == "proj" and first["dir"] == str(run)
    assert first["resume"] == "allow" and first["config"]["log"]["wandb"] == "offline"
    assert [s for s, _ in fake.logged] == [1, 2, 3, 4, 5] and "loss" in fake.logged[0][1]
    assert fake.finished == 2


def test_wandb_missing_is_a_one_line_error(tmp_path, monkeypatch, torch_globals):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(UserError, match=r"log.wandb=offline needs the wandb package \(pip install wandb\)"):
        make_trainer(tmp_path / "run", ["log.wandb=offline"]).run()
