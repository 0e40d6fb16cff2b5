"""``launcher submit --smoke``: the five-minute self-check of a set-up, as a job of the real run's request.

Fast: the report's lines from the ranks' records (pure functions), the dry run (the real run's script
with the smoke's command, walltime and data), the one-line refusals. Slow (mpirun): the local smoke
with 2 CPU ranks under mpirun + Horovod and under DDP (every line and PASS), a hidden Horovod (FAIL
naming the import, exit 1), and ranks that see another world size than the job asked for."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from pixpro_of.smoke import checks, report

PY = sys.executable
CHECKS = ["imports", "gpus", "allreduce", "scratch", "train", "stop/resume"]


def launcher(env, cwd, *args, timeout=600):
    return subprocess.run(
        [PY, "-m", "launcher.cli", *map(str, args)],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ----------------------------------------------------------------- the report from the ranks' records
def _start(host="n1", local_rank=0, gpus=0, names=(), uuids=(), missing=None, scratch=None):
    return {
        "host": host,
        "node": 0,
        "local_rank": local_rank,
        "imports": {
            "python": "/env/bin/python",
            "python_version": "3.11.7",
            "found": {"torch": "2.14.1", "h5py": "3.16.0"},
            "missing": missing or {},
        },
        "gpus": {"count": gpus, "names": list(names), "uuids": list(uuids)},
        "scratch": scratch or {"dir": "/local/r-1", "shards": 1, "bytes": 2**20, "free": 5 * 2**30},
    }


def _end(world=2, train=True):
    end = {
        "errors": {},
        "allreduce": {
            "world": world,
            "library": "torch.distributed gloo",
            "mib": 16,
            "seconds": 0.02,
            "algbw": 0.84,
            "busbw": 0.84,
        },
    }
    if train:
        end["train"] = {
            "rc": 75,
            "steps": 20,
            "seconds": 9.0,
            "reason": "signal SIGUSR2",
            "samples_per_s": 8.25,
            "median_from": 7,
            "batch": 4,
            "loss": [0.1, -1.5],
        }
        end["stop"] = {
            "rc1": 75,
            "signal": "SIGUSR2",
            "sent_at": 20,
            "checkpoint": "step_00000020.pt",
            "rc2": 0,
            "resumed_from": 20,
            "done": True,
            "last_step": 24,
            "seconds": 3.0,
        }
    return end


def test_the_report_of_a_good_run_has_six_lines_and_pass():
    ok, lines = report.compose({0: _start(), 1: _start(local_rank=1)}, {0: _end(), 1: _end()}, 2, 0, "cpu_small", 83)
    assert ok and [l.split(":")[0] for l in lines] == CHECKS + ["smoke"]
    assert lines[0] == ("imports: OK: 1 host(s): n1 (ranks 0-1): /env/bin/python 3.11.7, torch 2.14.1, h5py 3.16.0")
    assert lines[1] == "gpus: OK: n1 (ranks 0-1): 0 GPUs (CPU ranks)"
    assert lines[2] == (
        "allreduce: OK: 2 ranks, torch.distributed gloo, sums right on every rank; 16 MiB in "
        "20.0 ms: bus bandwidth 0.84 GB/s (algorithm 0.84 GB/s)"
    )
    assert lines[3] == "scratch: OK: n1: /local/r-1 (1 shard(s), 1.0 MiB staged; 5.0 GiB free)"
    assert lines[4] == (
        "train: OK: 20 steps of cpu_small, global batch 4 (2 per rank), 8.2 samples/s "
        "(median of steps 7-20), loss 0.100 -> -1.500"
    )
    assert lines[5].startswith(
        "stop/resume: OK: SIGUSR2 sent to rank 0 after step 20: checkpoint "
        "step_00000020.pt, exit 75; resumed from step 20 to step 24, exit 0"
    )
    assert lines[6] == "smoke: PASS (6 of 6 checks, 1 min 23 s)"


def test_the_verdict_names_the_first_failed_check_in_one_line():
    starts = {0: _start(), 1: _start(host="n2", missing={"horovod.torch": "No module named 'horovod'"})}
    ends = {
        0: {"errors": {"allreduce": "x"}, "allreduce": {"error": "rank 0: dist.backend=horovod: not installed"}},
        1: {"errors": {}},
    }
    ok, lines = report.compose(starts, ends, 2, 0, "cpu_small", 4)
    assert not ok
    assert lines[0] == "imports: FAIL: horovod.torch on n2 (rank 1, /env/bin/python): No module named 'horovod'"
    assert lines[2] == "allreduce: FAIL: rank 0: dist.backend=horovod: not installed"
    assert lines[4] == "train: FAIL: not run: the allreduce failed"
    assert lines[-1] == (
        "smoke: FAIL: imports: horovod.torch on n2 (rank 1, /env/bin/python): No module named "
        "'horovod' (2 of 6 checks passed, 0 min 4 s)"
    )
    assert sum(l.startswith("smoke:") for l in lines) == 1


def test_gpu_lines_see_each_ranks_cards_and_refuse_blind_or_shared_ranks():
    h100 = ("NVIDIA H100 80GB HBM3",) * 2
    good = {
        0: _start(gpus=2, names=h100, uuids=("GPU-a", "GPU-b")),
        1: _start(local_rank=1, gpus=2, names=h100, uuids=("GPU-a", "GPU-b")),
    }
    assert report.line_gpus(good, 2) == (True, "gpus: OK: n1 (ranks 0-1): 2 GPUs each (NVIDIA H100 80GB HBM3 x2)")
    # one GPU per rank (CUDA_VISIBLE_DEVICES per rank), but both ranks got the same card
    shared = {
        0: _start(gpus=1, names=h100[:1], uuids=("GPU-a",)),
        1: _start(local_rank=1, gpus=1, names=h100[:1], uuids=("GPU-a",)),
    }
    assert report.line_gpus(shared, 2) == (False, "gpus: FAIL: ranks 0-1 on n1 would train on the same GPU")
    blind = {0: _start(gpus=0), 1: _start(local_rank=1, gpus=0)}
    ok, line = report.line_gpus(blind, 2)
    assert not ok and line.startswith("gpus: FAIL: ranks 0-1 on n1 see no GPU; the job asked for 2 per node")


def test_a_resume_that_fails_keeps_the_training_line_and_names_the_failure():
    end = _end()
    del end["stop"]
    end["errors"]["stop/resume"] = "TrainingFailure: rank 0 cannot load step_00000020.pt"
    ok, lines = report.compose({0: _start(), 1: _start()}, {0: end, 1: _end()}, 2, 0, "cpu_small", 30)
    assert not ok and lines[4].startswith("train: OK: 20 steps")
    assert lines[5] == "stop/resume: FAIL: TrainingFailure: rank 0 cannot load step_00000020.pt"
    assert lines[-1].startswith(
        "smoke: FAIL: stop/resume: TrainingFailure: rank 0 cannot load step_00000020.pt (5 of 6"
    )


def test_a_hung_phase_and_missing_ranks_are_named():
    ok, lines = report.compose(
        {0: _start()},
        {},
        2,
        0,
        "cpu_small",
        250,
        ("allreduce", "no result by the smoke's deadline (245 s after the job start)"),
    )
    assert lines[0] == "imports: FAIL: no report from rank 1 of 2 (did they start?)"
    assert lines[2] == "allreduce: FAIL: no result by the smoke's deadline (245 s after the job start)"
    # another world size: the allreduce line says so, not the imports line
    ok, lines = report.compose(
        {0: _start(), 1: _start()},
        {0: {"errors": {}, "allreduce": {"world": 2, "error": "rank 0 sees world size 2, the job has 3 ranks"}}},
        3,
        0,
        "cpu_small",
        10,
    )
    assert lines[0].startswith("imports: OK") and lines[-1].startswith(
        "smoke: FAIL: allreduce: rank 0 sees world size 2, the job has 3 ranks"
    )


# ----------------------------------------------------------------- the job the smoke submits
def test_the_dry_run_is_the_real_request_with_the_smokes_command_walltime_and_data(tmp_path):
    env = dict(os.environ)
    r = launcher(
        env,
        tmp_path,
        "submit",
        "--smoke",
        "--scheduler",
        "slurm",
        "--gpus",
        "0",
        "--ranks-per-node",
        "2",
        "--preset",
        "cpu_small",
        "--name",
        "mine",
        "--walltime",
        "12:00:00",
        "optim.base_lr=0.5",
        "--dry-run",
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    script = r.stdout
    run = tmp_path / "runs" / "mine-smoke"
    assert "#SBATCH --time=00:05:00" in script and "#SBATCH --ntasks-per-node=2" in script
    assert "LAUNCHER_MAX_TIMEOUTS=0" in script and "LAUNCHER_MAX_PREEMPTIONS=0" in script
    assert f"RUN_DIR={run}" in script
    assert f"hdf5_tools.cli stage {run}/smoke_data/manifest.json --to" in script
    cmd = re.search(r"^launcher_command=\((.*)\)$", script, re.M).group(1)
    assert cmd.startswith(
        f"{PY} -m pixpro_of smoke --run-dir {run} --config cpu_small --ranks 2 "
        f"--gpus-per-node 0 --rank-batch 2 --deadline"
    ), cmd
    assert "dist.backend=horovod optim.base_lr=0.5" in cmd
    assert "data.shards=[" in script and not run.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--stage", "flow", "--data", "x"], "--smoke checks the training run's set-up; leave out --stage flow"),
        (["--scheduler", "slurm", "--chain", "2"], "--smoke is one job; leave out --chain"),
        (
            ["--trainer-command", "python t.py"],
            "--smoke runs the shipped trainer ('pixpro_of smoke' around "
            "'pixpro_of train'); leave out --trainer-command",
        ),
        (["--preset", "no_such"], "--preset 'no_such': no such trainer preset"),
    ],
)
def test_what_the_smoke_cannot_check_is_refused_in_one_line(args, message, tmp_path):
    r = launcher(dict(os.environ), tmp_path, "submit", "--smoke", "--gpus", "0", *args, "--dry-run", timeout=120)
    assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1], r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_rank_command_refuses_bad_words_in_one_line():
    r = subprocess.run([PY, "-m", "pixpro_of", "smoke", "--run-dir", "x"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == (
        "pixpro_of smoke: error: --ranks: give the number of ranks the job started (at least 1)"
    )
    r = subprocess.run(
        [PY, "-m", "pixpro_of", "smoke", "--run-dir", "x", "--ranks", "2", "oops"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.strip().endswith(
        "unexpected argument 'oops': the trainer's overrides are key=value"
    )


# ----------------------------------------------------------------- the smoke as a local job (2 CPU ranks)
def _smoke_env(mpi_env, tmp_path):
    env = dict(mpi_env)
    local = tmp_path / "local"
    local.mkdir()
    env["TMPDIR"] = str(local)  # the local profile's node-local directory
    return env, local


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("backend,library", [("horovod", "Horovod MPI"), ("ddp", "torch.distributed gloo")])
def test_local_smoke_with_two_cpu_ranks_reports_every_line_and_passes(backend, library, tmp_path, mpi_env):
    env, local = _smoke_env(mpi_env, tmp_path)
    t0 = time.time()
    r = launcher(
        env,
        tmp_path,
        "submit",
        "--smoke",
        "--scheduler",
        "local",
        "--gpus",
        "0",
        "--preset",
        "cpu_small",
        "--backend",
        backend,
        "--name",
        f"s-{backend}",
        "--wait",
    )
    took = time.time() - t0
    run = tmp_path / "runs" / f"s-{backend}-smoke"
    log = (run / "logs" / "run.log").read_text() if (run / "logs" / "run.log").exists() else ""
    print(f"local smoke ({backend}, 2 CPU ranks): {took:.1f} s from submit to verdict\n{r.stdout}")
    assert r.returncode == 0, r.stdout + r.stderr + log[-4000:]
    lines = r.stdout.splitlines()
    assert [l.split(":")[0] for l in lines] == CHECKS + ["smoke"], lines
    assert all(": OK: " in l for l in lines[:6]), lines
    found = "horovod 0.28.1, mpi4py" if backend == "horovod" else "h5py"
    assert (
        re.match(
            rf"imports: OK: 1 host\(s\): \S+ \(ranks 0-1\): {re.escape(PY)} 3\.\d+\.\d+, torch \S+, "
            rf"torchvision \S+, h5py \S+",
            lines[0],
        )
        and found in lines[0]
    ), lines[0]
    assert ("horovod" in lines[0]) == (backend == "horovod")
    assert lines[1].endswith("(ranks 0-1): 0 GPUs (CPU ranks)")
    bw = re.match(
        rf"allreduce: OK: 2 ranks, {library}, sums right on every rank; 16 MiB in [0-9.]+ ms: bus bandwidth "
        r"([0-9.]+) GB/s",
        lines[2],
    )
    assert bw and float(bw.group(1)) > 0, lines[2]
    staged = re.match(
        rf"scratch: OK: \S+: {re.escape(str(local))}/s-{backend}-smoke-local-\d+ \(1 shard\(s\), "
        r"[0-9.]+ MiB staged; ([0-9.]+) GiB free\)",
        lines[3],
    )
    assert staged and float(staged.group(1)) > 0, lines[3]
    rate = re.match(r"train: OK: 20 steps of cpu_small, global batch 4 \(2 per rank\), ([0-9.]+) samples/s", lines[4])
    assert rate and float(rate.group(1)) > 0, lines[4]
    assert re.match(
        r"stop/resume: OK: SIGUSR2 sent to rank 0 after step 20: checkpoint step_00000020\.pt, exit 75; "
        r"resumed from step 20 to step 24, exit 0 \(done marker\)",
        lines[5],
    ), lines[5]
    assert re.match(r"smoke: PASS \(6 of 6 checks, [0-4] min \d+ s\)$", lines[6]), lines[6]
    # the same lines in the run's log and in RUN/smoke.txt; the job finished, its staged copy is gone
    assert (run / "smoke.txt").read_text() == r.stdout
    assert all(l in log for l in lines)
    assert (run / "job" / "events.tsv").read_text().splitlines()[-1].endswith("finished")
    assert not [p for p in local.iterdir() if p.name.startswith(f"s-{backend}-smoke")]


@pytest.mark.slow
@pytest.mark.mpi
def test_local_smoke_without_horovod_fails_naming_the_import(tmp_path, mpi_env):
    env, _ = _smoke_env(mpi_env, tmp_path)
    hidden = tmp_path / "hide" / "horovod"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'horovod' (hidden by the test)\")\n")
    env["PYTHONPATH"] = str(hidden.parent)
    r = launcher(
        env,
        tmp_path,
        "submit",
        "--smoke",
        "--scheduler",
        "local",
        "--gpus",
        "0",
        "--preset",
        "cpu_small",
        "--name",
        "nohvd",
        "--wait",
    )
    print(r.stdout)
    run = tmp_path / "runs" / "nohvd-smoke"
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert (
        lines[0].startswith("imports: FAIL: horovod.torch on ")
        and "No module named 'horovod' (hidden by the test)" in lines[0]
    )
    assert lines[2].startswith("allreduce: FAIL: rank ") and "Horovod is not installed" in lines[2]
    assert lines[1].startswith("gpus: OK") and lines[3].startswith("scratch: OK")
    assert re.match(r"smoke: FAIL: imports: horovod\.torch on .* \(2 of 6 checks passed, 0 min \d+ s\)$", lines[-1])
    assert sum(l.startswith("smoke:") for l in lines) == 1
    assert (run / "smoke.txt").read_text() == r.stdout
    assert (run / "job" / "events.tsv").read_text().splitlines()[-1].endswith("fail: smoke command exited 1")
    # the same command again: the earlier smoke's directory is named, nothing is submitted
    again = launcher(
        env,
        tmp_path,
        "submit",
        "--smoke",
        "--scheduler",
        "local",
        "--gpus",
        "0",
        "--preset",
        "cpu_small",
        "--name",
        "nohvd",
        "--wait",
    )
    assert again.returncode == 2 and again.stderr.strip() == (
        f"launcher submit: error: {run} holds an earlier smoke ({run}/smoke.txt); remove that directory to run the "
        f"smoke again"
    ), again.stderr


@pytest.mark.slow
@pytest.mark.mpi
def test_ranks_that_see_another_world_size_fail_the_allreduce_line(tmp_path, mpi_env):
    data = tmp_path / "data"
    r = subprocess.run(
        [
            PY,
            "-m",
            "hdf5_tools.cli",
            "pack",
            "synth:videos=2,frames=3,size=64x48,seed=0",
            str(data),
            "--nodes",
            "1",
            "--no-progress",
        ],
        env=mpi_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    r = subprocess.run(
        [
            "mpirun",
            "-np",
            "2",
            PY,
            "-m",
            "pixpro_of",
            "smoke",
            "--run-dir",
            str(run),
            "--ranks",
            "3",
            "--config",
            "cpu_small",
            "dist.backend=ddp",
            f"data.shards=[{data}/manifest.json]",
        ],
        env=mpi_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = (run / "smoke.txt").read_text().splitlines()
    print("\n".join(lines))
    assert r.returncode != 0
    assert lines[2] == "allreduce: FAIL: rank 0 sees world size 2, the job has 3 ranks"
    assert lines[-1].startswith("smoke: FAIL: allreduce: rank 0 sees world size 2, the job has 3 ranks (")
    assert lines[-1] in r.stdout


def test_the_allreduce_check_measures_a_fixed_message_and_refuses_another_world_size():
    from pixpro_of.dist.backend import SingleProcessBackend

    be = SingleProcessBackend(device="cpu")
    res = checks.allreduce_check(be, 1)
    assert res["world"] == 1 and res["mib"] == 16 and res["seconds"] > 0 and res["busbw"] == 0 and "error" not in res
    assert checks.allreduce_check(be, 4)["error"] == "rank 0 sees world size 1, the job has 4 ranks"


def test_the_scratch_probe_reads_this_nodes_staged_shards_and_names_what_is_missing(tmp_path):
    from hdf5_tools.pack import PackConfig, pack

    pack(PackConfig(src="synth:videos=2,frames=3,size=64x48,seed=0", out=str(tmp_path / "d"), nodes=2, progress=False))
    got = checks.probe_scratch(str(tmp_path / "d" / "manifest.json"), 1, 2)
    assert got["shards"] == 1 and got["bytes"] > 0 and got["free"] > 0 and "error" not in got, got
    missing = checks.probe_scratch(str(tmp_path / "none" / "manifest.json"), 0, 1)
    assert missing["error"] == f"the staged manifest {tmp_path}/none/manifest.json is missing"
    assert checks.probe_scratch(None, 0, 1)["error"].startswith("no data.shards manifest was passed")
