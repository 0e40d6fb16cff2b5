"""``launcher pipeline --dry-run``: every stage's script and submit command with the scheduler's own
dependency, and the one-line refusals, without a scheduler."""

from __future__ import annotations

import re

import pytest

from launcher import cli

SYNTH = "synth:videos=8,frames=6,size=128x64,seed=0"


def dry(args, capsys):
    rc = cli.main(["pipeline", "--dry-run", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    "sched,cluster,expect",
    [
        ("slurm", "slurm", ["'--dependency=afterok:<job id of stage pack>'", "--kill-on-invalid-dep=yes"]),
        ("pbs", "pbs", ["-W 'depend=afterok:<job id of stage pack>'"]),
        ("sge", "sge", ["-hold_jid '<job id of stage pack>'"]),
        ("pjm", "pjm", ["--step", "--sparam 'jid=<job id of stage pack>'"]),
    ],
)
def test_every_stage_waits_for_the_one_before_with_the_schedulers_dependency(sched, cluster, expect, tmp_path, capsys):
    rc, out, err = dry(
        [
            "--scheduler",
            sched,
            "--cluster",
            cluster,
            "--gpus",
            "0",
            "--preset",
            "cpu_small",
            "--videos",
            SYNTH,
            "--flow-model",
            "dis",
            "--dir",
            str(tmp_path / "p"),
            "--group",
            "g1",
            "data.synthetic=false",
        ],
        capsys,
    )
    assert rc == 0, err
    stages = re.findall(r"^# ===== stage (\w+) \(needs ([\w, ]+)\)", out, re.M)
    assert stages == [
        ("pack", "nothing"),
        ("flow", "pack"),
        ("verify", "flow"),
        ("train", "verify"),
        ("convert", "train"),
    ]
    submits = err.strip().splitlines()
    assert len(submits) == 5 and not any("<job id" in w for w in submits[0].split())
    assert all(e in submits[1] for e in expect), submits[1]
    assert "<job id of stage train>" in submits[4]
    # the pack stage packs one node set per training node, the flow stage computes DIS flow
    assert "hdf5_tools.cli pack 'synth:videos=8" in out and " --nodes 1 " in out
    assert "hdf5_tools.cli flow" in out and "--model dis" in out
    assert not (tmp_path / "p").exists(), "a dry run writes nothing"


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "--videos: give the BDD100K folder"),
        (["--videos", SYNTH, "--stage", "flow"], "--stage, --from-run and --run-dir are chosen by 'launcher pipeline'"),
        (
            ["--videos", SYNTH, "--flow-model", "raft-small"],
            "--flow-weights: --flow-model raft-small needs a local RAFT",
        ),
        (["--videos", SYNTH, "--flow-weights", "/no/raft.pth"], "--flow-weights /no/raft.pth: no such file"),
        (["--videos", SYNTH, "--flow-model", "dis", "--flow-args", "'x"], '--flow-args "\'x": No closing quotation'),
        (["--videos", "/no/such/bdd", "--flow-model", "dis"], "--videos /no/such/bdd: no such folder"),
    ],
)
def test_refusals_are_one_line(args, message, tmp_path, capsys):
    rc, out, err = dry(
        [
            "--scheduler",
            "slurm",
            "--gpus",
            "0",
            "--preset",
            "cpu_small",
            "--dir",
            str(tmp_path / "p"),
            "data.synthetic=false",
            *args,
        ],
        capsys,
    )
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_pipeline_directory_is_not_reused(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "pipeline.json").write_text('{"stages": []}')
    rc, out, err = dry(
        [
            "--scheduler",
            "slurm",
            "--gpus",
            "0",
            "--preset",
            "cpu_small",
            "--videos",
            SYNTH,
            "--flow-model",
            "dis",
            "--dir",
            str(tmp_path / "p"),
        ],
        capsys,
    )
    assert rc == 2 and "already holds a pipeline; continue it with 'launcher resume" in err
