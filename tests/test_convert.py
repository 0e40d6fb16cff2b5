"""convert: detectron2 .pkl keys/values, torchvision .pth strict loading and features, bad input."""

from __future__ import annotations

import argparse
import pickle

import numpy as np
import pytest
import torch

from pixpro_of.__main__ import main as cli
from pixpro_of.model.pixpro import ModelConfig, PixPro
from pixpro_of.train.checkpoint import CheckpointStore
from pixpro_of.transfer.convert import detectron2_key, features_c5, load_torchvision_backbone


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    """Give every BN distinct statistics so a mixed-up key would show in the values."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.num_batches_tracked.fill_(7)


def _pixpro(arch: str, seed: int = 0) -> PixPro:
    torch.manual_seed(seed)
    model = PixPro(ModelConfig(arch=arch, proj_hidden=16, proj_dim=8))
    _randomize_bn(model.encoder, seed + 1)
    _randomize_bn(model.encoder_k, seed + 2)  # differs from the online encoder
    return model


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """A resnet50 PixPro saved by the trainer's CheckpointStore in a run directory."""
    torch.set_num_threads(1)
    model = _pixpro("resnet50")
    run = tmp_path_factory.mktemp("run50")
    info, _ = CheckpointStore(run / "checkpoints").save(
        {"step": 5, "epoch": 1, "model": model.state_dict(), "config": {"model": {"arch": "resnet50"}}}
    )
    return model, run, info.path


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    torch.set_num_threads(1)
    model = _pixpro("resnet18", seed=3)
    run = tmp_path_factory.mktemp("run18")
    info, _ = CheckpointStore(run / "checkpoints").save({"step": 2, "epoch": 0, "model": model.state_dict()})
    return model, run, info.path


def expected_d2_resnet50_keys():
    """detectron2's ResNet-50 parameter/buffer names (BottleneckBlock, BasicStem), written out by hand."""
    norm = ("weight", "bias", "running_mean", "running_var")
    keys = ["stem.conv1.weight"] + [f"stem.conv1.norm.{n}" for n in norm]
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
        for b in range(blocks):
            convs = ["conv1", "conv2", "conv3"] + (["shortcut"] if b == 0 else [])
            for c in convs:
                keys.append(f"res{stage}.{b}.{c}.weight")
                keys += [f"res{stage}.{b}.{c}.norm.{n}" for n in norm]
    return keys


def torchvision_name(d2: str) -> str:
    """Independent inverse of the seed's mapping, to find the encoder value a d2 key must hold."""
    if d2.startswith("stem."):
        return d2.replace("stem.conv1.norm.", "bn1.").replace("stem.", "")
    stage, block, rest = d2.split(".", 2)
    layer = f"layer{int(stage[3:]) - 1}.{block}."
    if rest.startswith("shortcut.norm."):
        return layer + "downsample.1." + rest[len("shortcut.norm.") :]
    if rest.startswith("shortcut."):
        return layer + "downsample.0." + rest[len("shortcut.") :]
    conv, field = rest.split(".", 1)
    if field.startswith("norm."):
        return layer + f"bn{conv[4:]}." + field[len("norm.") :]
    return layer + rest


def test_detectron2_export_has_exactly_d2_resnet50_keys_and_encoder_values(r50, tmp_path):
    model, run, ckpt = r50
    out = tmp_path / "r50.pkl"
    assert cli(["convert", str(ckpt), "--to", "detectron2", str(out)]) == 0
    obj = pickle.loads(out.read_bytes())
    assert obj["__author__"] == "PixPro" and obj["matching_heuristics"] is True
    assert set(obj) == {"model", "__author__", "matching_heuristics"}
    expected = expected_d2_resnet50_keys()
    assert len(expected) == 265
    assert sorted(obj["model"]) == sorted(expected)
    enc = model.encoder.state_dict()
    enc_k = model.encoder_k.state_dict()
    for key in expected:
        value = obj["model"][key]
        assert isinstance(value, np.ndarray), key
        src = enc[torchvision_name(key)].numpy()
        np.testing.assert_array_equal(value, src, err_msg=key)
    # online, not momentum, encoder: BN statistics were made different on purpose
    assert not np.array_equal(
        obj["model"]["res5.2.conv3.norm.running_mean"], enc_k["layer4.2.bn3.running_mean"].numpy()
    )
    # a run directory resolves to checkpoints/latest and gives the same file contents
    out2 = tmp_path / "from_run.pkl"
    assert cli(["convert", str(run), "--to", "detectron2", str(out2)]) == 0
    obj2 = pickle.loads(out2.read_bytes())
    assert all(np.array_equal(obj["model"][k], obj2["model"][k]) for k in expected)
    assert not list(tmp_path.glob(".*tmp*"))


def test_torchvision_export_resnet50_loads_without_fc_only(r50, tmp_path):
    import torchvision

    model, _, ckpt = r50
    out = tmp_path / "r50.pth"
    assert cli(["convert", str(ckpt), "--to", "torchvision", str(out)]) == 0
    sd = torch.load(out, weights_only=True)
    res = torchvision.models.resnet50().load_state_dict(sd, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"]
    assert res.unexpected_keys == []
    net = load_torchvision_backbone(out)
    assert isinstance(net.fc, torch.nn.Identity)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k


def test_torchvision_export_gives_the_encoders_features(r18, tmp_path):
    model, _, ckpt = r18
    out = tmp_path / "r18.pth"
    assert cli(["convert", str(ckpt), "--to", "torchvision", str(out)]) == 0
    net = load_torchvision_backbone(str(out)).eval()
    enc = model.encoder.eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = enc(x)
        got = features_c5(net, x)
        pooled = net(x)
    assert got.shape == ref.shape == (2, 512, 2, 3)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(pooled, ref.mean((2, 3)), rtol=1e-5, atol=1e-6)


def test_seed_ddp_checkpoint_is_accepted(r18, tmp_path):
    """The seed's format: opt Namespace, DDP 'module.' keys, value_transform, no num_batches_tracked."""
    model, _, _ = r18
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        k = k.replace("ppm.value_transform", "value_transform")
        sd["module." + k] = v
    seed_ckpt = tmp_path / "ckpt_epoch_3.pth"
    torch.save({"opt": argparse.Namespace(arch="resnet18", epochs=3), "model": sd, "epoch": 3}, seed_ckpt)
    out = tmp_path / "seed.pth"
    assert cli(["convert", str(seed_ckpt), "--to", "torchvision", str(out)]) == 0
    got = torch.load(out, weights_only=True)
    for k, v in model.encoder.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert int(got[k]) == 0  # filled in: torchvision's strict load needs it
        else:
            assert torch.equal(got[k], v), k
    pkl = tmp_path / "seed.pkl"
    assert cli(["convert", str(seed_ckpt), "--to", "detectron2", str(pkl)]) == 0
    d2 = pickle.loads(pkl.read_bytes())["model"]
    np.testing.assert_array_equal(
        d2["res3.0.shortcut.norm.running_var"], model.encoder.layer2[0].downsample[1].running_var.numpy()
    )
    assert "res2.0.shortcut.weight" not in d2  # resnet18's first block has no projection shortcut
    assert not any("num_batches_tracked" in k for k in d2)


@pytest.mark.parametrize("case", ["missing", "text", "no_encoder", "out_is_dir", "wrong_shape"])
def test_bad_input_is_one_line_user_error(case, tmp_path, capsys):
    out = tmp_path / "out.pkl"
    src = tmp_path / "in.pt"
    expect = str(src)
    if case == "text":
        src.write_text("not a checkpoint\n")
    elif case == "no_encoder":
        torch.save({"model": {"projector.linear1.weight": torch.zeros(2, 2)}, "step": 1}, src)
    elif case == "out_is_dir":
        torch.save({"model": {f"encoder.{k}": v for k, v in _pixpro("resnet18").encoder.state_dict().items()}}, src)
        out = tmp_path / "adir"
        out.mkdir()
        expect = str(out)
    elif case == "wrong_shape":
        sd = {f"encoder.{k}": v for k, v in _pixpro("resnet18").encoder.state_dict().items()}
        sd["encoder.layer3.1.conv2.weight"] = torch.zeros(3, 3, 3, 3)
        torch.save({"model": sd}, src)
    rc = cli(["convert", str(src), "--to", "detectron2", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("pixpro_of convert: error: ") and "\n" not in err
    assert expect in err
    if case == "no_encoder":
        assert "no online-encoder weights" in err
    if case == "wrong_shape":
        assert "layer3.1.conv2.weight" in err
    assert not out.is_file() and not list(tmp_path.glob(".*tmp*"))


def test_detectron2_key_mapping_rules():
    assert detectron2_key("conv1.weight") == "stem.conv1.weight"
    assert detectron2_key("bn1.running_var") == "stem.conv1.norm.running_var"
    assert detectron2_key("layer1.0.bn3.bias") == "res2.0.conv3.norm.bias"
    assert detectron2_key("layer4.2.conv2.weight") == "res5.2.conv2.weight"
    assert detectron2_key("layer3.0.downsample.0.weight") == "res4.0.shortcut.weight"
    assert detectron2_key("layer3.0.downsample.1.running_mean") == "res4.0.shortcut.norm.running_mean"
    assert detectron2_key("layer2.1.bn1.num_batches_tracked") is None
    with pytest.raises(ValueError):
        detectron2_key("fc.weight")


def test_detectron2_round_trip_and_safe_loading(r18, tmp_path):
    from pixpro_of.evaluation.backbone import resolve_backbone
    from pixpro_of.transfer.convert import read_detectron2, torchvision_key
    from plumbing.errors import UserError

    model, _, ckpt = r18
    pkl = tmp_path / "r18.pkl"
    assert cli(["convert", str(ckpt), "--to", "detectron2", str(pkl)]) == 0
    bb = resolve_backbone(f"detectron2:{pkl}")
    assert bb.arch == "resnet18"
    for k, v in model.encoder.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(bb.state[k], v), k
    for k in model.encoder.state_dict():
        d2 = detectron2_key(k)
        if d2 is not None:
            assert torchvision_key(d2) == k
    evil = tmp_path / "evil.pkl"

    class Boom:
        def __reduce__(self):
            return (print, ("side effect",))

    evil.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": Boom()}}))
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        read_detectron2(evil)


def test_run_directory_uses_newest_valid_checkpoint_and_seed_current_pth(tmp_path, capsys):
    from pixpro_of.transfer.encoder_state import load_encoder_state
    from plumbing.errors import UserError

    a, b = _pixpro("resnet18", seed=10), _pixpro("resnet18", seed=20)
    store = CheckpointStore(tmp_path / "run" / "checkpoints")
    store.save({"step": 1, "epoch": 0, "model": a.state_dict()})
    info2, _ = store.save({"step": 2, "epoch": 0, "model": b.state_dict()})
    got = load_encoder_state(tmp_path / "run")
    assert got.source == str(info2.path)
    assert torch.equal(got.state["layer1.0.bn1.running_mean"], b.encoder.layer1[0].bn1.running_mean)
    data = bytearray(info2.path.read_bytes())
    data[100:110] = b"0123456789"  # damage the newest checkpoint: same size, wrong sha256
    info2.path.write_bytes(bytes(data))
    got = load_encoder_state(tmp_path / "run")
    assert got.source.endswith("step_00000001.pt")
    assert torch.equal(got.state["layer1.0.bn1.running_mean"], a.encoder.layer1[0].bn1.running_mean)
    seed_dir = tmp_path / "seed_out"
    seed_dir.mkdir()
    torch.save(
        {"opt": argparse.Namespace(epochs=1), "model": {f"module.{k}": v for k, v in b.state_dict().items()}},
        seed_dir / "current.pth",
    )
    got = load_encoder_state(seed_dir)
    assert got.kind == "seed" and got.source.endswith("current.pth")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="without checkpoints"):
        load_encoder_state(empty)
