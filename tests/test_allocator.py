"""keep_freed_memory: re-allocating large blocks stops faulting pages in (glibc)."""

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import torch
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    from pixpro_of.train.allocator import keep_freed_memory
    assert keep_freed_memory()
def step():  # like a training step: many activations alive at once, all freed after backward
    blocks = [torch.empty((3 << 18) + 1024 * i).fill_(1.0) for i in range(20)]  # ~3 MiB each
    del blocks
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


# glibc's defaults adapt their thresholds to the program's history, so whether a given pattern
# faults with them varies; fixed small thresholds make every block an mmap (the worst case, what
# the defaults do for a step's first large blocks) in both probes, and keep_freed_memory must undo it.
SMALL_THRESHOLDS = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def faults(mode: str) -> int:
    env = dict(os.environ, **SMALL_THRESHOLDS)
    p = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    return int(p.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, kept = faults("small"), faults("keep")
    print(f"\nminor page faults for 10 x 20 blocks of ~3 MiB: 128 KiB thresholds {default}, kept {kept}")
    # 10 x 20 x 768 pages: every block mmap-ed afresh and faulted in again; kept, the blocks are reused.
    assert default > 100_000
    assert kept * 20 < default
