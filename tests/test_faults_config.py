"""Config values that cannot train are refused up front, and checks that do not apply to the data
source are not run (issue 14)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from pixpro_of.config import TrainConfig, check_resume_compatible, config_from_dict, load_config, validate
from plumbing.errors import UserError


@pytest.mark.parametrize(
    "override, shown",
    [
        ("optim.base_lr=inf", "'inf'"),
        ("optim.base_lr=.inf", "inf"),
        ("optim.weight_decay=nan", "'nan'"),
        ("data.alpha1=-.inf", "-inf"),
        ("stop.margin_s=.nan", "nan"),
        ("data.crop_scale=[0.1,.inf]", "inf"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_key(override, shown):
    key = override.split("=")[0]
    with pytest.raises(UserError) as info:
        load_config(None, [override])
    assert str(info.value) == f"override {override!r}: {key} must be a finite number (got {shown})"


def test_non_finite_numbers_from_files_and_code_are_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  base_lr: .inf\n")
    with pytest.raises(UserError, match=rf"^config {f}: optim\.base_lr must be a finite number \(got inf\)$"):
        load_config(str(f))
    with pytest.raises(UserError, match=r"^config: optim\.eta_min must be a finite number \(got nan\)$"):
        cfg = TrainConfig()
        cfg.optim.eta_min = math.nan
        validate(cfg)
    with pytest.raises(UserError, match=r"optim\.momentum must be a finite number \(got inf\)"):
        config_from_dict({"optim": {"momentum": float("inf")}}, "run/config.json")


def test_the_cli_refuses_inf_with_one_line_before_anything_runs(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixpro_of",
            "train",
            "--config",
            "cpu_small",
            "--run-dir",
            str(tmp_path / "run"),
            "optim.base_lr=inf",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "pixpro_of train: error: override 'optim.base_lr=inf': optim.base_lr must be a finite number (got 'inf')"
    )
    assert not (tmp_path / "run").exists()


def test_synthetic_world_checks_run_only_without_shards():
    with pytest.raises(UserError, match=r"data\.synth\.frames must be >= data\.k = 11"):
        load_config(None, ["data.k=11"])
    cfg = load_config(None, ["data.k=11", "data.shards=[some/manifest.json]"])  # the world is not used
    assert cfg.data.k == 11 and cfg.data.synth.frames < 11
    cfg = load_config(None, ["data.k=11", "data.synthetic=false", "data.synth.videos=0"])
    assert cfg.data.synth.videos == 0


def test_bad_sample_policy_options():
    cfg = load_config(None, [])
    assert (cfg.data.on_bad_sample, cfg.data.bad_sample_budget) == ("fail", 100)
    with pytest.raises(UserError, match=r"data\.on_bad_sample must be one of fail, skip \(got 'ignore'\)"):
        load_config(None, ["data.on_bad_sample=ignore"])
    with pytest.raises(UserError, match=r"data\.bad_sample_budget must be >= 0 \(got -1\)"):
        load_config(None, ["data.bad_sample_budget=-1"])
    # A run that failed on a bad sample may resume with skipping turned on.
    old = load_config(None, []).to_dict()
    check_resume_compatible(old, load_config(None, ["data.on_bad_sample=skip", "data.bad_sample_budget=5"]), "c")
