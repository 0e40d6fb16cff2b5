"""bench/gpu_check.py (the device check) without a GPU: the plan fits one device command (480 s)
with a limit per step, the dry run prints it without importing torch, bad arguments are one line,
the wrapper and the Makefile targets say what travels, and (slow) the whole check runs end to end
on the CPU with tiny sizes, writing its summary within the 8 result files. Its first step is the
launcher's smoke (pixpro_of/smoke/) as one rank: the device check's environment and DDP
stop/resume checks live there now."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "bench" / "gpu_check.py"
WRAPPER = ROOT / "bench" / "gpu_check.sh"
STEPS = ["smoke", "input", "step_fp32", "step_bf16", "raft"]

sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


def driver(*args, timeout=120):
    return subprocess.run(
        [sys.executable, str(DRIVER), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def parse_plan(out: str):
    steps = re.findall(r"^step (\d+) (\S+) +(\d+) s  (.+)$", out, re.M)
    total = re.search(r"^total (\d+) s <= (\d+) s", out, re.M)
    return [(name, int(t)) for _, name, t, _ in steps], int(total.group(1)), int(total.group(2))


def test_dry_run_prints_every_step_with_its_budget_within_one_device_command():
    p = driver("--dry-run")
    assert p.returncode == 0, p.stderr
    steps, total, budget = parse_plan(p.stdout)
    assert [n for n, _ in steps] == STEPS
    assert all(15 <= t <= 200 for _, t in steps), steps
    assert budget == 480 and total == gpu_check.WRAPPER_S + sum(t for _, t in steps) and total <= 480
    assert "wrapper 30 s (carried wheels, this tree)" in p.stdout and "at most 8 files" in p.stdout
    # the smoke holds two trainer starts (stop, resume) and the collectives: it has the largest share
    assert max(steps, key=lambda s: s[1])[0] == "smoke"


def test_dry_run_and_help_import_no_torch():
    code = (
        "import runpy, sys; sys.argv = ['gpu_check', '--dry-run']\n"
        "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')" % str(DRIVER)
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().splitlines()[-1] == "NO-TORCH", r.stdout + r.stderr


def test_plan_scales_every_step_into_a_smaller_budget_and_keeps_the_order():
    full = gpu_check.plan()
    assert sum(t for _, t, _ in full) + gpu_check.WRAPPER_S <= 480
    small = gpu_check.plan(240)
    assert [n for n, _, _ in small] == [n for n, _, _ in full]
    assert sum(t for _, t, _ in small) + gpu_check.WRAPPER_S <= 240
    assert all(0 < s < f for (_, s, _), (_, f, _) in zip(small, full))
    assert gpu_check.plan(480, ["raft"]) == [s for s in gpu_check.STEPS if s[0] == "raft"]
    p = driver("--dry-run", "--budget", "240", "--only", "smoke,raft")
    steps, total, budget = parse_plan(p.stdout)
    assert [n for n, _ in steps] == ["smoke", "raft"] and total <= 240 and budget == 240


@pytest.mark.parametrize(
    "args,message",
    [
        (["--budget", "600"], "--budget must be in 1..480 s (one device command), got 600"),
        (["--only", "smoke,bogus"], "--only: unknown step 'bogus' (steps: smoke, input, step_fp32, step_bf16, raft)"),
    ],
)
def test_bad_arguments_are_one_line(args, message):
    p = driver("--dry-run", *args)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith(message), p.stderr


def test_without_data_a_step_fails_naming_what_to_run(tmp_path):
    p = driver(
        "--cpu", "--only", "smoke", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out"), timeout=300
    )
    assert p.returncode == 1
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert re.search(r"smoke: limit_s \d+, took_s [0-9.]+, status FAIL \(exit 1\)", summary), summary
    log = (tmp_path / "out" / "steps.log").read_text()
    assert (
        f"gpu_check: no packed data at {tmp_path / 'none' / 'manifest.json'} (make gpu-check-data, or --prepare)" in log
    )


def test_wrapper_passes_shellcheck_and_its_dry_run_runs_the_driver_without_installing(tmp_path):
    r = subprocess.run(["bash", "-n", str(WRAPPER)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", "--severity=info", str(WRAPPER)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[:4000]
    r = subprocess.run(
        ["bash", str(WRAPPER), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "PYTHON": sys.executable,
            "GPU_CHECK_SITE": str(tmp_path / "site"),
        },
    )
    assert r.returncode == 0, r.stderr
    assert parse_plan(r.stdout)[0][0][0] == "smoke"
    assert not (tmp_path / "site").exists()  # a dry run installs nothing


def test_make_targets_download_cp312_manylinux_wheels_and_pack_on_this_machine():
    if not shutil.which("make"):
        pytest.skip("no make")
    r = subprocess.run(["make", "-n", "gpu-wheels"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    cmd = r.stdout
    for part in (
        "pip download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version 3.12",
        "--implementation cp",
        "--platform manylinux2014_x86_64",
        "-d gpu_wheels",
        "simplejpeg==",
    ):
        assert part in cmd, (part, cmd)
    r = subprocess.run(["make", "-n", "gpu-check-data"], capture_output=True, text=True, cwd=ROOT)
    assert "bench/gpu_check.py --prepare" in r.stdout
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/gpu_wheels/" in ignored and "/gpu_check_data/" in ignored


@pytest.mark.slow
def test_the_whole_check_runs_end_to_end_on_the_cpu(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    p = driver("--prepare", "--tiny", "--data", str(data), timeout=600)
    assert p.returncode == 0 and (data / "manifest.json").exists(), p.stdout + p.stderr
    p = driver("--cpu", "--data", str(data), "--out", str(out), timeout=900)
    log = (out / "steps.log").read_text() if (out / "steps.log").exists() else ""
    assert p.returncode == 0, p.stdout + p.stderr + log[-6000:]
    files = sorted(f.name for f in out.rglob("*") if f.is_file())
    assert files == ["steps.log", "summary.json", "summary.txt"] and len(files) <= 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] and summary["card"].startswith("CPU") and list(summary["steps"]) == STEPS
    s = summary["steps"]
    assert all(e["status"] == "PASS" for e in s.values()), s
    assert s["smoke"]["torch"] and s["smoke"]["torchvision"] and s["smoke"]["passed"]
    # the launcher's smoke, as one rank: its six lines and the verdict
    assert [ln.split(":")[0] for ln in s["smoke"]["lines"]] == [
        "imports",
        "gpus",
        "allreduce",
        "scratch",
        "train",
        "stop/resume",
        "smoke",
    ]
    assert "allreduce: OK: 1 rank, torch.distributed gloo" in s["smoke"]["lines"][2]
    assert "1 rank: no transfer" in s["smoke"]["lines"][2] and "0 GPUs (CPU ranks)" in s["smoke"]["lines"][1]
    assert "resumed from step 20 to step 24, exit 0 (done marker)" in s["smoke"]["lines"][5]
    assert s["smoke"]["verdict"].startswith("smoke: PASS (6 of 6 checks")
    assert s["input"]["views_samples_per_s"] > 0 and s["input"]["input_s_per_batch"] >= s["input"]["views_s_per_batch"]
    for name, precision in (("step_fp32", "fp32"), ("step_bf16", "bf16")):
        e = s[name]
        assert e["precision"] == precision and e["steps"] == 4 and e["samples_per_s"] > 0, e
        assert e["views_s"] > 0 and e["peak_mib_per_sample"] > 0
    assert s["raft"]["fp32_pairs_per_s"] > 0 and s["raft"]["bf16_pairs_per_s"] > 0
    assert 0 < s["raft"]["bf16_vs_fp32_mean_epe_px"] < 5  # bf16 differs a little from fp32, not wildly
    assert summary["input_over_step"] > 0
    text = (out / "summary.txt").read_text()
    assert text.startswith(f"gpu_check (cpu) on {summary['card']}: all steps passed")
    for name in STEPS:
        assert re.search(rf"^\[{re.escape(summary['card'])}\] {name}: .*status PASS", text, re.M), text
    assert f"[{summary['card']}] smoke | smoke: PASS (6 of 6 checks" in text
