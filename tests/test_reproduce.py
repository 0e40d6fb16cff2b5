"""``python -m pixpro_of reproduce``: a tiny end-to-end run, the summary maths, and bad input."""
import json
import math
import subprocess
import sys

import pytest

from plumbing.errors import UserError
from pixpro_of import reproduce as rp
from pixpro_of.reproduction import plan, report

TINY = ["--rows", "random,k2-mask", "--seeds", "0", "--steps", "3", "--time-box", "3m", "--videos", "4",
        "--video-frames", "3", "--size", "64x32", "--eval-videos", "3", "--eval-val-videos", "1", "--eval-frames", "2",
        "--eval-every", "1", "--eval-size", "64x32", "--eval-iters", "3", "--eval-batch", "2", "--eval-crop", "32x64"]


@pytest.mark.slow
def test_tiny_reproduction_end_to_end(tmp_path, capsys):
    out = tmp_path / "rep"
    assert rp.main(["--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out

    # The three artefacts, with the right rows.
    table = (out / "table.md").read_text()
    main_table, diagnostics = table.split("\n\n", 1)
    lines = [ln for ln in main_table.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| Method | Frames k | Mask | Seeds | Steps (mean)")
    assert "mIoU linear (mean ± std)" in lines[0]
    body = lines[1:]
    assert [ln.split(" | ")[0] for ln in body] == ["| Random init (no pretraining)", "| Ablation k=2, FB mask"]
    assert body[1].split(" | ")[1:3] == ["2", "seed"]
    assert body[1].rstrip(" |").endswith("48.71")  # the seed's reported number for that row
    assert table in printed  # the table is printed as well as written
    # Diagnostics only for pretrained rows: loss, positives, mask ratio of the k=2 run.
    diag = [ln for ln in diagnostics.splitlines() if ln.startswith("| Ablation")]
    assert len(diag) == 1 and "Random init" not in diagnostics
    loss, pos, empty, ratio = (float(v) for v in diag[0].strip("| ").split(" | ")[1:])
    assert pos > 0 and 0.0 <= empty <= 1.0 and 0.0 <= ratio <= 1.0
    png = (out / "miou.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000

    res = json.loads((out / "results.json").read_text())
    assert res["failed"] == []
    assert [r["row"] for r in res["rows"]] == ["random", "k2-mask"]
    assert res["command"].startswith("python -m pixpro_of reproduce --out ")
    d = res["rows"][1]["diagnostics"]
    assert set(d) == {"loss", "positive_pair/avg", "positive_pair/empty", "mask_ratio"}
    assert res["rows"][0]["diagnostics"] == {}
    by_row = {r["row"]: r for r in res["runs"]}
    # Each mIoU in the table is the one the evaluation wrote.
    for name in ("random", "k2-mask"):
        scores = json.loads((out / "eval" / f"{name}-s0-linear" / "scores.json").read_text())
        assert by_row[name]["mIoU"] == pytest.approx(scores["mIoU"])
        assert 0.0 <= scores["mIoU"] <= 100.0
        assert f"{scores['mIoU']:.2f} (n=1)" in table
    # The pretraining ran its 3-step budget on the DIS shards, with the row's k and mask, and
    # the evaluation used that run's backbone on a disjoint world seed.
    train = by_row["k2-mask"]["train"]
    assert train["step"] == 3 and train["rc"] == 0
    run_cfg = json.loads((out / "runs" / "k2-mask-s0" / "config.json").read_text())
    cfg = run_cfg.get("config", run_cfg)
    assert cfg["data"]["k"] == 2 and cfg["data"]["mask"] == "seed"
    assert cfg["data"]["shards"] == [str(out / "data" / "pretrain_dis")]
    assert (out / "data" / "pretrain_dis" / ".dis-done").is_file()
    synth = json.loads((out / "data" / "cityscapes" / "synth.json").read_text())
    assert synth["config"]["seed"] == 1000 and synth["config"]["format"] == "cityscapes"
    ev = json.loads((out / "eval" / "k2-mask-s0-linear" / "scores.json").read_text())
    assert str(out / "runs" / "k2-mask-s0") in ev["backbone"]["spec"]
    assert json.loads((out / "eval" / "random-s0-linear" / "scores.json").read_text())["backbone"]["arch"] == "resnet18"

    # Running again redoes nothing and gives the same table.
    mtime = (out / "eval" / "k2-mask-s0-linear" / "scores.json").stat().st_mtime
    assert rp.main(["--out", str(out), *TINY]) == 0
    assert "done already" in capsys.readouterr().out
    assert (out / "table.md").read_text() == table
    assert (out / "eval" / "k2-mask-s0-linear" / "scores.json").stat().st_mtime == mtime


def test_mean_and_sample_std():
    mean, std = report._mean_std([50.0, 52.0, 54.0])
    assert mean == pytest.approx(52.0) and std == pytest.approx(2.0)  # ddof = 1
    assert report._mean_std([47.5]) == (47.5, None)
    assert report._mean_std([]) == (None, None)
    assert report._fmt(52.0, 2.0, 3) == "52.00 ± 2.00"
    assert report._fmt(47.5, None, 1) == "47.50 (n=1)"


def test_schedule_and_durations():
    # 32 videos, batch 4: 8 steps an epoch; 2000 steps need 250 epochs, 401 need 51.
    assert plan.schedule_epochs(2000, 32, 4) == 250
    assert plan.schedule_epochs(401, 32, 4) == 51
    assert plan.schedule_epochs(3, 4, 4) == 3
    assert rp.parse_duration("10m") == 600 and rp.parse_duration("90s") == 90
    assert rp.parse_duration("1h30m") == 5400 and rp.parse_duration("75") == 75
    assert math.isclose(rp.parse_duration("2.5m"), 150)


def test_default_configuration_is_the_issues():
    a = rp.parse_args([])
    cfg = rp.config_from_args(a).validate()
    assert cfg.rows == ("random", "k1", "k6", "k2-nomask", "k2-mask")
    assert cfg.seeds == (0, 1, 2) and cfg.time_box_s == 600 and cfg.flow == "dis"
    assert cfg.out == "reproduce_out"
    assert [(plan.ROWS[r].k, plan.ROWS[r].mask) for r in cfg.rows[1:]] == [(1, "none"), (6, "seed"), (2, "none"),
                                                                     (2, "seed")]


@pytest.mark.parametrize("argv, message", [
    (["--rows", "k1,k9"], "--rows: unknown row 'k9'"),
    (["--eval-modes", "svm"], "--eval-modes: unknown mode 'svm'"),
    (["--eval-seed", "100"], "--eval-seed 100: must differ from --data-seed"),
    (["--rows", "k6", "--video-frames", "4"], "--video-frames 4: the k=6 row needs at least 6 frames"),
    (["--videos", "3"], "--videos 3: fewer than one batch of 4 clips"),
])
def test_bad_options_are_one_line_errors(tmp_path, argv, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace("+", r"\+")):
        rp.main(["--out", str(tmp_path / "o"), *argv])
    assert not (tmp_path / "o").exists()  # nothing written for bad input


def test_cli_prints_one_line_and_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pixpro_of", "reproduce", "--out", str(tmp_path / "o"),
                        "--seeds", "0", "--rows", "nope"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown row 'nope'" in r.stderr
    assert "Traceback" not in r.stderr
