"""The per-GPU memory estimate (pixpro_of/model/memory.py) and the trainer's --gpu-memory-gib check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pixpro_of.config import load_config
from pixpro_of.model.memory import GIB, check_fits, estimate_bytes, model_params
from plumbing.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
K6 = ["data.shards=[x.h5]"]


@pytest.mark.parametrize(
    "arch,hidden,dim,ppm", [("resnet18", 256, 64, 1), ("resnet50", 4096, 256, 1), ("resnet34", 512, 128, 2)]
)
def test_parameter_counts_match_the_model(arch, hidden, dim, ppm):
    from pixpro_of.config import ModelConfig
    from pixpro_of.model.pixpro import PixPro

    m = PixPro(ModelConfig(arch=arch, proj_hidden=hidden, proj_dim=dim, ppm_layers=ppm))
    online = sum(p.numel() for mod in m.online_modules() for p in mod.parameters())
    total = sum(p.numel() for p in m.parameters())
    assert model_params(arch, hidden, dim, ppm) == (online, total - online)


@pytest.mark.parametrize(
    "arch,size,precision", [("resnet18", 96, "fp32"), ("resnet34", 64, "fp32"), ("resnet18", 128, "bf16")]
)
def test_activation_term_matches_the_saved_tensors_of_the_real_model(arch, size, precision):
    """Bytes saved for backward per sample (batch 2 minus batch 1), measured, against the estimate."""
    import torch

    from pixpro_of.model.memory import TRANSIENT_FACTOR
    from pixpro_of.model.pixpro import PixPro

    cfg = load_config("cpu_small", [f"model.arch={arch}", f"data.image_size={size}", f"optim.precision={precision}"])

    def saved(batch):
        torch.manual_seed(0)
        m = PixPro(cfg.model).train()
        c = PixPro.feature_size(size) ** 2
        v = torch.randn(batch, 3, size, size)
        pos = torch.rand(batch, c, c) > 0.8
        seen = {}

        def pack(t):
            st = t.untyped_storage()
            seen[(st.data_ptr(), st.nbytes())] = st.nbytes()
            return t

        ctx = (
            torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
        )
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
            m(v, v.clone(), pos, pos.transpose(1, 2).contiguous())
        params = {(p.untyped_storage().data_ptr(), p.untyped_storage().nbytes()) for p in m.parameters()}
        return sum(b for k, b in seen.items() if k not in params)

    measured = saved(2) - saved(1)
    estimated = (
        estimate_bytes(cfg, 2).parts["activations"] - estimate_bytes(cfg, 1).parts["activations"]
    ) / TRANSIENT_FACTOR
    assert abs(estimated - measured) / measured < 0.12, (estimated, measured)


def test_preset_figures_and_what_scales():
    k6 = load_config("pixpro_k6", K6)
    e64, e256 = estimate_bytes(k6, 64), estimate_bytes(k6, 256)
    assert 11 * GIB < e64.total < 16 * GIB  # the seed's 64 per GPU: fits a 16 GiB V100
    assert 40 * GIB < e256.total < 64 * GIB  # 256 per GPU: not a 40 GiB card
    bf16 = estimate_bytes(load_config("pixpro_k6", K6 + ["optim.precision=bf16"]), 256)
    assert bf16.parts["activations"] < 0.6 * e256.parts["activations"]
    raft = load_config("pixpro_k6", K6 + ["data.flow_source=raft", "data.raft_weights=r.pth", "data.decode_on=worker"])
    r32, r8 = (
        estimate_bytes(raft, 64),
        estimate_bytes(
            load_config(
                "pixpro_k6",
                K6 + ["data.flow_source=raft", "data.raft_weights=r.pth", "data.decode_on=worker", "data.raft_chunk=8"],
            ),
            64,
        ),
    )
    # 32 pairs of 1280x720 frames: 14400^2 correlations x 4 B x 4/3 levels each, ~34 GiB
    assert 30 * GIB < r32.parts["raft"] < 38 * GIB and r8.parts["raft"] < r32.parts["raft"] / 3.5


def test_check_fits_refuses_in_one_line_and_names_the_fix():
    k6 = load_config("pixpro_k6", K6)
    assert check_fits(k6, 80, 16).rank_batch == 64
    with pytest.raises(UserError) as info:
        check_fits(k6, 40, 4)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("data.batch_size=1024 over 4 GPUs is 256 per GPU and needs about ")
    assert "but a GPU has 40 GiB; use at least 8 GPUs (128 per GPU), or train with gradient accumulation" in msg
    with pytest.raises(UserError, match="data.batch_size=1024 is not divisible by the 3 ranks"):
        check_fits(k6, 80, 3)


def test_the_train_command_checks_without_importing_torch():
    code = (
        "import atexit, runpy, sys; atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr)); "
        "sys.argv = ['pixpro_of', 'train', '--config', 'pixpro_k6', 'data.shards=[x.h5]', '--print-config', "
        "'--gpu-memory-gib', '16', '--ranks', '8']; runpy.run_module('pixpro_of', run_name='__main__')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[-1] == "False" and len(lines) == 2, r.stderr
    assert (
        lines[0].startswith("pixpro_of train: error: data.batch_size=1024 over 8 GPUs is 128 per GPU")
        and "use at least 16 GPUs (64 per GPU)" in lines[0]
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixpro_of",
            "train",
            "--config",
            "pixpro_k6",
            "data.shards=[x.h5]",
            "--print-config",
            "--gpu-memory-gib",
            "141",
            "--ranks",
            "16",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.startswith("{")
    assert "64 samples per GPU need about" in r.stderr


def test_the_launcher_asks_the_trainer_with_the_profiles_gpu_memory(capsys):
    from launcher import cli
    from launcher.clusters import load_profile

    assert (
        load_profile("abci3").gpu_memory_gib,
        load_profile("abci2").gpu_memory_gib,
        load_profile("tsubame3").gpu_memory_gib,
        load_profile("slurm").gpu_memory_gib,
    ) == (141, 16, 16, 0)
    base = ["render", "--scheduler", "sge", "--cluster", "abci2", "--group", "g1", "--run-dir", "/runs/m"]
    assert cli.main(base + ["--gpus", "4"]) == 2  # 1 node of 4 V100 16 GB: 256 samples per GPU
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and "the trainer refuses this config" in err
        and "over 4 GPUs is 256 per GPU" in err
        and "but a GPU has 16 GiB; use at least 16 GPUs (64 per GPU)" in err
    )
    assert cli.main(base + ["--gpus", "16"]) == 0
    capsys.readouterr()
    # a profile that does not know its card asks nothing of the kind
    assert (
        cli.main(["render", "--scheduler", "slurm", "--cluster", "slurm", "--gpus", "4", "--run-dir", "/runs/m"]) == 0
    )
