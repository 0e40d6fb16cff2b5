"""keep_freed_memory: re-allocating large blocks stops faulting pages in (glibc)."""
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import torch
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


def faults(mode: str) -> int:
    p = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return int(p.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, kept = faults("default"), faults("keep")
    print(f"\nminor page faults for 10 x 20 blocks of ~3 MiB: glibc defaults {default}, kept {kept}")
    # With glibc's defaults every block is mmap-ed afresh and faulted in again; kept, it is reused.
    assert default > 5_000
    assert kept * 10 < default
