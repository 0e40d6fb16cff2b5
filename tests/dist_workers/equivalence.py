"""Worker for tests/test_distributed.py: train a small conv+BN net with a backend, save weights.

usage: equivalence.py BACKEND GLOBAL_BATCH STEPS OUT.pt
Every rank takes an interleaved share of each global batch (rank r: items r, r+R, ...), as the
trainer's sampler does, so R ranks x b and 1 rank x R*b see the same samples per step.
"""

import sys

import torch
import torch.nn as nn

from pixpro_of.dist.backend import make_backend


def main() -> int:
    backend_name, global_batch, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    be = make_backend(backend_name, device="cpu")
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)
    )
    net = be.convert_sync_batchnorm(net)
    be.broadcast_parameters(net)
    model = be.wrap_model(net)
    opt = be.wrap_optimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), net)
    g = torch.Generator().manual_seed(1)
    data = torch.randn(steps, global_batch, 3, 8, 8, generator=g)
    target = torch.randn(steps, global_batch, 4, 8, 8, generator=g)
    mine = slice(be.rank, global_batch, be.world_size)
    for s in range(steps):
        opt.zero_grad()
        loss = ((model(data[s, mine]) - target[s, mine]) ** 2).mean()
        loss.backward()
        opt.step()
    mean_loss = be.allreduce(loss.detach(), "mean")
    if be.is_main:
        torch.save({"state": net.state_dict(), "loss": mean_loss}, out)
    be.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
