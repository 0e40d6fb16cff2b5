"""Worker for tests/test_distributed.py: rank 1 kills itself while rank 0 waits in a collective.

usage: die.py BACKEND
"""

import os
import signal
import sys
import time

import torch

from pixpro_of.dist.backend import make_backend


def main() -> int:
    be = make_backend(sys.argv[1], device="cpu")
    be.allreduce(torch.ones(2), "sum")  # both ranks alive and connected
    if be.rank == 1:
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)
    for _ in range(1000):  # rank 0 keeps calling collectives that can never complete
        be.allreduce(torch.ones(2), "sum")
        time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
