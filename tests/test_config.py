"""Training config: presets hold the seed's values, overrides are typed, mistakes are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pixpro_of.config import TrainConfig, check_resume_compatible, config_from_dict, list_presets, load_config
from plumbing.errors import UserError


@pytest.mark.parametrize("k,precision", [(1, "bf16"), (2, "fp32"), (6, "fp32")])
def test_seed_presets_hold_the_seed_recipe(k, precision):
    cfg = load_config(f"pixpro_k{k}")
    assert cfg.data.k == k and cfg.run.epochs == 2000 and cfg.data.batch_size == 1024
    assert cfg.lr() == 4.0  # base 1.0 x 1024 / 256
    assert cfg.optim.weight_decay == 1e-5 and cfg.optim.warmup_epochs == 5
    assert cfg.optim.warmup_multiplier == 100 and cfg.optim.eta_min == 1e-6 and cfg.optim.momentum == 0.9
    assert cfg.model.arch == "resnet50" and cfg.model.proj_hidden == 4096 and cfg.model.proj_dim == 256
    assert cfg.model.ppm_gamma == 2.0 and cfg.model.momentum_base == 0.99
    assert cfg.data.pos_ratio == 0.7 and (cfg.data.alpha1, cfg.data.alpha2) == (0.01, 0.5)
    assert cfg.optim.precision == precision
    assert cfg.data.synthetic is False  # the BDD runs must name their shards


def test_presets_are_listed_and_cpu_preset_is_small():
    assert {"pixpro_k1", "pixpro_k2", "pixpro_k6", "cpu_small"} <= set(list_presets())
    cfg = load_config("cpu_small")
    assert cfg.model.arch == "resnet18" and cfg.data.image_size == 64 and cfg.data.synthetic


def test_overrides_are_typed():
    cfg = load_config(
        "pixpro_k6",
        [
            "optim.base_lr=0.5",
            "data.shards=[a.h5, b.h5]",
            "run.deterministic=yes",
            "data.batch_size=256",
            "stop.signals=SIGTERM,SIGUSR1",
            "stop.deadline=2h",
        ],
    )
    assert cfg.optim.base_lr == 0.5 and cfg.lr() == 0.5
    assert cfg.data.shards == ["a.h5", "b.h5"] and cfg.run.deterministic is True
    assert cfg.stop.signals == ["SIGTERM", "SIGUSR1"] and cfg.stop.deadline == "2h"


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=3", "unknown config key 'optim.lrr' (did you mean 'optim.base_lr'?)"),
        ("optim.base_lr=abc", "optim.base_lr must be a number (got 'abc')"),
        ("data.batch_size=0", "data.batch_size must be >= 1 (got 0)"),
        ("data.batch_size=1.5", "data.batch_size must be an integer (got 1.5)"),
        ("model.arch=resnet51", "model.arch must be one of resnet18, resnet34, resnet50 (got 'resnet51')"),
        ("optim.precision=fp8", "optim.precision must be one of fp32, bf16, fp16"),
        ("data.image_size=100", "data.image_size must be a multiple of 32"),
        ("run.deterministic=maybe", "run.deterministic must be true or false"),
        ("optim.warmup_epochs=2000", "optim.warmup_epochs must be in [0, run.epochs = 2000)"),
        ("stop.signals=[SIGKILL]", "stop.signals must name catchable signals"),
        ("stop.deadline=soon", "config: stop.deadline: 'soon' is not a deadline"),
        ("stop.deadline=3600", "config: stop.deadline: '3600' has no unit"),
        ("stop.signals=[12]", "stop.signals must name catchable signals like SIGUSR2: '12': give the signal's name"),
        ("data.decode_on=gpu", "data.decode_on must be one of worker, device (got 'gpu')"),
        ("data.decode_chunk=0", "data.decode_chunk must be >= 1 (got 0)"),
        ("run=3", "unknown config key 'run'"),
        ("nokey", "expected key=value"),
    ],
)
def test_bad_values_give_one_line_errors(override, message):
    with pytest.raises(UserError) as e:
        load_config("pixpro_k6", [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_files_give_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  base_lr: [1,\n")
    with pytest.raises(UserError, match=r"bad.yaml line \d+: not valid YAML"):
        load_config(str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("optim:\n  lars_trust: 0.001\n")
    with pytest.raises(UserError, match=r"unknown.yaml: unknown config key 'optim.lars_trust'"):
        load_config(str(unknown))
    with pytest.raises(UserError, match="no such file or preset"):
        load_config("no_such_preset")
    with pytest.raises(UserError, match="no such file"):
        load_config(str(tmp_path / "missing.yaml"))


def test_cli_prints_one_line_and_exits_2():
    r = subprocess.run(
        [sys.executable, "-m", "pixpro_of", "train", "--config", "pixpro_k6", "--run-dir", "x", "data.k=0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "pixpro_of train: error: config: data.k must be >= 1 (got 0)"


def test_config_round_trips_through_json():
    cfg = load_config("cpu_small", ["optim.base_lr=0.25"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_resume_compatibility_allows_stop_and_log_changes_only():
    saved = load_config("pixpro_k6").to_dict()
    check_resume_compatible(
        saved, load_config("pixpro_k6", ["stop.deadline=1h", "log.tensorboard=false", "data.num_workers=8"]), "cfg"
    )
    with pytest.raises(UserError, match=r"data.k: 6 -> 2"):
        check_resume_compatible(saved, load_config("pixpro_k6", ["data.k=2"]), "cfg")
    assert isinstance(load_config(None), TrainConfig)


def test_presets_are_overlays_on_a_base(tmp_path):
    """``base: NAME`` merges NAME first: the k presets state only where the method differs."""
    import yaml

    from pixpro_of.config import resolve_config_path

    for name in ("pixpro_k1", "pixpro_k2", "pixpro_k6"):
        data = yaml.safe_load(resolve_config_path(name).read_text())
        assert data["base"] == "_seed_bdd100k" and set(data) <= {"base", "data", "optim"}
    assert "_seed_bdd100k" not in list_presets()
    (tmp_path / "mine.yaml").write_text("base: pixpro_k6\ndata:\n  k: 3\n")
    cfg = load_config(str(tmp_path / "mine.yaml"))
    assert cfg.data.k == 3 and cfg.data.positives_on == "device" and cfg.data.synthetic is False
    assert cfg.data.decode_on == "device"  # the GPU presets decode and augment on the device
    assert load_config("pixpro_k1").data.decode_on == "worker" and load_config("cpu_small").data.decode_on == "worker"
    (tmp_path / "near.yaml").write_text("base: mine.yaml\noptim:\n  base_lr: 0.5\n")  # relative to the file
    cfg = load_config(str(tmp_path / "near.yaml"))
    assert cfg.data.k == 3 and cfg.optim.base_lr == 0.5
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(UserError, match="includes itself"):
        load_config(str(tmp_path / "loop.yaml"))
    (tmp_path / "bad.yaml").write_text("base: no_such_preset\n")
    with pytest.raises(UserError, match="no such file or preset"):
        load_config(str(tmp_path / "bad.yaml"))


def test_positives_mode_is_chosen_once_from_the_config():
    def mode(*overrides):
        return load_config("cpu_small", list(overrides)).data.positives_mode()

    assert mode() == "worker" and mode("data.positives_on=device") == "stored"
    assert mode("data.flow_source=raft", "data.raft_weights=x.pth") == "raft"
    assert mode("data.k=1", "data.positives_on=device") == "worker"  # no flow: the workers do it
    from pixpro_of.config import PositiveConfig, SampleConfig
    from pixpro_of.model.pixpro import ModelConfig

    cfg = load_config("cpu_small")  # the sections are the component configs themselves
    assert isinstance(cfg.data, SampleConfig) and isinstance(cfg.data, PositiveConfig)
    assert type(cfg.model) is ModelConfig


def _fields(cls, prefix=""):
    """``(dotted key, field, section class or None)`` of every field under ``cls``, depth first."""
    import dataclasses

    for f in dataclasses.fields(cls):
        sub = type(getattr(cls(), f.name))
        sub = sub if dataclasses.is_dataclass(sub) else None
        yield prefix + f.name, f, sub
        if sub is not None:
            yield from _fields(sub, prefix + f.name + ".")


def test_every_key_is_declared_with_one_line_of_doc_and_its_section_knows_its_name():
    keys = list(_fields(TrainConfig))
    assert len(keys) > 70 and "data.synth.frames" in {k for k, _, _ in keys}
    for key, f, sub in keys:
        doc = f.metadata.get("doc", "")
        assert doc and "\n" not in doc and len(doc) <= 160, key
        if sub is not None:  # a section validated alone names its keys as the whole config does
            assert sub.KEY == key, (key, sub.KEY)
    from pixpro_of.config import DataConfig, SynthDataConfig

    with pytest.raises(UserError, match=r"^config: data\.synth\.frames must be >= data\.k = 6 \(got 2\)$"):
        DataConfig(synth=SynthDataConfig(frames=2)).validate()
    DataConfig(shards=["a.h5"], synth=SynthDataConfig(frames=2)).validate()  # the world is not used: not checked


@pytest.mark.parametrize(
    "overrides,first",
    [
        (["model.arch=x", "run.epochs=0"], "run.epochs must be >= 1"),  # sections in order: run before model
        (["data.k=0", "data.alpha1=-1"], "data.alpha1 must be >= 0"),  # the positive keys are declared first
        (
            ["optim.warmup_epochs=9", "run.epochs=3", "log.every_steps=0"],
            "optim.warmup_epochs must be in [0, run.epochs = 3)",
        ),
        (
            ["data.flow_source=raft", "data.decode_on=device"],
            "data.decode_on must be worker when data.flow_source=raft",
        ),
        (["data.flow_source=raft"], "data.raft_weights must name a RAFT checkpoint"),
        (["data.flow_source=none"], "config: data.mask must be none when data.flow_source=none"),
        (["data.synth.width=8"], "config: data.synth.width/height must be >= 16 (got (8, 64))"),
    ],
)
def test_checks_run_in_declaration_order_and_may_span_fields(overrides, first):
    with pytest.raises(UserError) as e:
        load_config("cpu_small", overrides)
    assert first in str(e.value)


def test_the_config_package_imports_neither_torch_nor_numpy():
    code = (
        "import sys\nfrom pixpro_of.config import load_config, dump_json\n"
        "dump_json(load_config('pixpro_k6', ['data.k=2']))\n"
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
