"""bench/bench_gpu_step.py (the prepared GPU run) works end to end: a tiny CPU run prints every figure."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_step_bench_runs_on_cpu_and_prints_the_ratio():
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_gpu_step.py"),
            "--device",
            "cpu",
            "--arch",
            "resnet18",
            "--batch",
            "2",
            "--image-size",
            "64",
            "--iters",
            "1",
            "--warmup",
            "1",
            "--precision",
            "fp32",
            "--raft-pairs",
            "1",
            "--raft-size",
            "128x128",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "device: CPU; resnet18, batch 2, 64px" in p.stdout
    ratio = re.search(r"pixpro samples/s x 2.7 / supervised img/s = ([0-9.]+)", p.stdout)
    assert ratio and float(ratio.group(1)) > 0
    assert re.search(r"RAFT-small, 12 iters, 128x128: [0-9.]+ pairs/s", p.stdout)
