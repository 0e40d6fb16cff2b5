"""eval seg: frozen dilated backbone, heads, schedule, data, and end-to-end runs on a tiny synthetic tree."""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest
import torch

from pixpro_of.__main__ import main as cli
from pixpro_of.evaluation.backbone import resolve_backbone
from pixpro_of.evaluation.data import TrainSegDataset, list_pairs, random_crop_pad
from pixpro_of.evaluation.deeplab import ASPP, build_model
from pixpro_of.evaluation.seg import SegConfig, lr_at


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory):
    """A tiny synthetic Cityscapes tree: 2 videos x 3 frames at 64x32 (1 train video, 1 val video)."""
    from synth import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("cs") / "cityscapes"
    write_dataset(root, SynthConfig(videos=2, frames=3, size=(64, 32), format="cityscapes", val_videos=1))
    return root


@pytest.fixture(scope="module")
def r18_run(tmp_path_factory):
    from pixpro_of.model.pixpro import ModelConfig, PixPro
    from pixpro_of.train.checkpoint import CheckpointStore

    torch.manual_seed(0)
    model = PixPro(ModelConfig(arch="resnet18", proj_hidden=16, proj_dim=8))
    run = tmp_path_factory.mktemp("run")
    CheckpointStore(run / "checkpoints").save({"step": 1, "epoch": 0, "model": model.state_dict()})
    return run


def test_resnet50_output_stride_16_with_multigrid_dilations():
    bb = resolve_backbone("random", "resnet50")
    model = build_model(bb.arch, bb.state, "deeplab", crop=(64, 128))
    l4 = model.backbone.layer4
    assert [b.conv2.dilation for b in l4] == [(2, 2), (4, 4), (8, 8)]
    assert [b.conv2.padding for b in l4] == [(2, 2), (4, 4), (8, 8)]
    assert l4[0].conv2.stride == (1, 1) and l4[0].downsample[0].stride == (1, 1)
    assert model.backbone.layer3[0].conv2.stride == (2, 2)
    assert model.head.aspp.pool_kernel == (4, 8)
    assert [b[0].dilation for b in model.head.aspp.branches] == [(1, 1), (6, 6), (12, 12), (18, 18)]
    x = torch.randn(1, 3, 64, 128)
    c5 = model.backbone(x)
    assert c5.shape == (1, 2048, 4, 8)
    model.eval()
    assert model(x).shape == (1, 19, 64, 128)
    plain = build_model(bb.arch, bb.state, "linear", output_stride=32)
    assert plain.backbone(x).shape == (1, 2048, 2, 4)


def test_backbone_stays_frozen_while_the_head_trains():
    bb = resolve_backbone("random", "resnet18", seed=1)
    model = build_model(bb.arch, bb.state, "deeplab", crop=(32, 32))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    model.train()
    assert not model.backbone.training and model.head.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 19, (2, 32, 32))
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN running statistics unchanged
    assert not torch.equal(model.head.predictor.weight, head_before["predictor.weight"])
    assert not torch.equal(model.head.aspp.project[1].running_mean, head_before["aspp.project.1.running_mean"])


def test_aspp_image_pooling_is_global_at_crop_size_and_local_beyond():
    aspp = ASPP(8, 4, pool_kernel=(2, 2)).eval()
    x = torch.randn(1, 8, 2, 2)
    ref = ASPP(8, 4, pool_kernel=None).eval()
    ref.load_state_dict(aspp.state_dict())
    torch.testing.assert_close(aspp(x), ref(x))  # kernel = map: global average
    big = torch.randn(1, 8, 4, 6)
    assert aspp(big).shape == (1, 4, 4, 6)
    assert not torch.allclose(aspp(big), ref(big))  # stride-1 local pooling as detectron2 at test size


def test_warmup_poly_schedule():
    cfg = SegConfig(iters=100, lr=0.01, warmup_iters=10, warmup_factor=0.001, poly_power=0.9)
    assert lr_at(cfg, 0) == pytest.approx(0.01 * 0.001)
    assert lr_at(cfg, 5) == pytest.approx(0.01 * (0.001 * 0.5 + 0.5) * (1 - 0.05) ** 0.9)
    assert lr_at(cfg, 10) == pytest.approx(0.01 * 0.9**0.9)
    assert lr_at(cfg, 99) == pytest.approx(0.01 * 0.01**0.9)


def test_train_samples_have_crop_shape_and_valid_labels(cs_root):
    pairs = list_pairs(cs_root, "train")
    assert len(pairs) == 3 and all(p.labels.name.endswith("_gtFine_labelIds.png") for p in pairs)
    ds = TrainSegDataset(pairs, (48, 40), (0.5, 2.0), seed=3)
    x, y = ds[0]
    x2, y2 = ds[0]
    assert x.shape == (3, 48, 40) and y.shape == (48, 40) and y.dtype == torch.int64
    assert torch.equal(x, x2) and torch.equal(y, y2)  # deterministic per index
    vals = set(torch.unique(y).tolist())
    assert vals <= set(range(19)) | {255} and vals & set(range(19))
    # padding: a 2x3 image cropped to 4x4 keeps its pixels and pads labels with 255
    rgb = np.full((2, 3, 3), 9, np.uint8)
    lab = np.zeros((2, 3), np.uint8)
    r, l = random_crop_pad(rgb, lab, (4, 4), np.random.default_rng(0))
    assert r.shape == (4, 4, 3) and (l[:2, :3] == 0).all() and (l[2:] == 255).all() and (l[:, 3] == 255).all()


def test_linear_probe_end_to_end_writes_scores_and_picture(cs_root, r18_run, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = cli(
        [
            "eval",
            "seg",
            "--backbone",
            str(r18_run),
            "--data",
            str(cs_root),
            "--out",
            str(out),
            "--mode",
            "linear",
            "--iters",
            "3",
            "--batch",
            "2",
            "--crop",
            "32x48",
            "--workers",
            "0",
            "--vis",
            "2",
            "--log-every",
            "1",
            "--save-preds",
        ]
    )
    assert rc == 0
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["class_iou"]) == {
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    }
    defined = [v for v in scores["class_iou"].values() if v is not None]
    assert scores["classes_evaluated"] == len(defined) >= 2
    assert scores["mIoU"] == pytest.approx(sum(defined) / len(defined), abs=1e-3)
    assert 0.0 <= scores["mIoU"] <= 100.0
    conf = np.array(scores["confusion"])
    assert conf.shape == (19, 19) and conf.sum() > 0
    assert conf.sum() <= 3 * 64 * 32  # 3 val images, ignored pixels not counted
    assert scores["n_val_images"] == 3 and scores["backbone"]["arch"] == "resnet18"
    assert scores["config"]["mode"] == "linear" and scores["config"]["crop"] == [32, 48]
    assert scores["train"]["iters"] == 3 and math.isfinite(scores["train"]["final_loss"])
    pic = cv2.imread(str(out / "predictions.png"))
    assert pic.shape == (2 * 32 + 4, 3 * 64 + 8, 3)  # 2 rows of image | gt | prediction
    rows = list(csv.reader((out / "train_log.csv").open()))
    assert rows[0] == ["iter", "lr", "loss"] and len(rows) == 4
    assert "mIoU" in capsys.readouterr().out
    assert not list(out.glob(".*tmp*"))
    # cityscapesScripts' own evaluation of the written label-id predictions gives the same mIoU
    import copy

    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    gts = sorted(str(p) for p in (cs_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    preds = [
        str(out / "val_preds" / "synth" / p.split("/")[-1].replace("_gtFine_labelIds", "_pred_labelIds")) for p in gts
    ]
    args = copy.copy(ev.args)
    args.quiet, args.JSONOutput, args.evalInstLevelScore, args.evalPixelAccuracy = True, False, False, False
    result = ev.evaluateImgLists(preds, gts, args)
    assert 100 * result["averageScoreClasses"] == pytest.approx(scores["mIoU"], abs=1e-3)


def test_deeplab_head_on_random_backbone_end_to_end(cs_root, tmp_path):
    out = tmp_path / "dl"
    rc = cli(
        [
            "eval",
            "seg",
            "--backbone",
            "random",
            "--arch",
            "resnet18",
            "--data",
            str(cs_root),
            "--out",
            str(out),
            "--iters",
            "2",
            "--batch",
            "2",
            "--crop",
            "32x32",
            "--workers",
            "0",
            "--max-val",
            "1",
            "--vis",
            "1",
        ]
    )
    assert rc == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["config"]["mode"] == "deeplab" and scores["n_val_images"] == 1
    assert np.array(scores["confusion"]).sum() > 0
    assert (out / "predictions.png").is_file()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data", "{missing}"], "leftImg8bit/train: no such folder"),
        (["--backbone", "{missing}/ckpt.pt"], "ckpt.pt: no such file"),
        (["--backbone", "torchvision:{run}/checkpoints/step_00000001.pt"], "not a torchvision ResNet state dict"),
        (["--iters", "0"], "--iters must be >= 1"),
    ],
)
def test_bad_input_is_one_line_user_error(args, needle, cs_root, r18_run, tmp_path, capsys):
    opts = {"--backbone": str(r18_run), "--data": str(cs_root), "--out": str(tmp_path / "o"), "--iters": "1"}
    opts.update({k: v.format(missing=tmp_path / "nowhere", run=r18_run) for k, v in zip(args[::2], args[1::2])})
    argv = ["eval", "seg", "--workers", "0"] + [x for kv in opts.items() for x in kv]
    rc = cli(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("pixpro_of eval seg: error: ")
    assert needle in err
    assert not (tmp_path / "o" / "scores.json").exists()


def test_torchvision_export_and_checkpoint_give_the_same_backbone(r18_run, tmp_path):
    out = tmp_path / "r18.pth"
    assert cli(["convert", str(r18_run), "--to", "torchvision", str(out)]) == 0
    a = resolve_backbone(f"torchvision:{out}")
    b = resolve_backbone(str(r18_run))
    assert a.arch == b.arch == "resnet18" and list(a.state) == list(b.state)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_bad_crop_is_a_usage_error(cs_root, capsys):
    rc = cli(["eval", "seg", "--backbone", "random", "--data", str(cs_root), "--out", "x", "--crop", "32by32"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("pixpro_of eval seg: error: ")
    assert "'--crop': '32by32' is not HEIGHTxWIDTH" in err
