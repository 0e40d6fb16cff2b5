"""CollectiveBatchNorm (the SyncBN of Horovod on GPU and of every backend on CPU) against torch's
BatchNorm: equal results on one rank and on two thread "ranks", channels_last kept."""

from __future__ import annotations

import threading

import pytest
import torch

from pixpro_of.dist.syncbn import CollectiveBatchNorm, collective_bn_factory, convert_batchnorm


def _identity(t, name):
    return t.clone()


class ThreadRanks:
    """``world`` threads that sum their tensors through a barrier: an allreduce for CPU tests."""

    def __init__(self, world: int):
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots = [None] * world
        self.calls = []

    def allreduce_for(self, rank: int):
        def allreduce_sum(t, name):
            self.slots[rank] = t.detach().clone()
            self.barrier.wait()
            total = torch.stack(self.slots).sum(0)
            self.barrier.wait()
            if rank == 0:
                self.calls.append((name, t.dtype, tuple(t.shape)))
            return total

        return allreduce_sum


def _pair(c=8, affine=True, seed=0):
    torch.manual_seed(seed)
    ref = torch.nn.BatchNorm2d(c, affine=affine)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
    ours = convert_batchnorm(torch.nn.Sequential(ref), collective_bn_factory(_identity))[0]
    ref = torch.nn.BatchNorm2d(c, affine=affine)
    ref.load_state_dict(ours.state_dict())
    return ref, ours


def _run(bn, x, dy):
    x = x.detach().clone().requires_grad_(True)
    y = bn(x)
    y.backward(dy)
    grads = [x.grad] + ([bn.weight.grad, bn.bias.grad] if bn.affine else [])
    return y.detach(), grads


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine", [True, False])
def test_one_rank_equals_batchnorm_and_keeps_the_memory_format(channels_last, affine):
    ref, ours = _pair(affine=affine)
    assert isinstance(ours, CollectiveBatchNorm)
    torch.manual_seed(1)
    x = torch.randn(6, 8, 10, 12) * 3 + 5  # a mean far from 0: the sums must not cancel
    dy = torch.randn(6, 8, 10, 12)
    if channels_last:
        x, dy = x.to(memory_format=torch.channels_last), dy.to(memory_format=torch.channels_last)
    for step in range(3):  # running statistics over several steps
        y_ref, g_ref = _run(ref, x * (step + 1), dy)
        y, g = _run(ours, x * (step + 1), dy)
        assert (y - y_ref).abs().max() < 2e-5
        for a, b in zip(g, g_ref):
            assert (a - b).abs().max() < 5e-5
        if affine:
            ref.zero_grad(), ours.zero_grad()
    assert torch.allclose(ours.running_mean, ref.running_mean, atol=1e-5, rtol=1e-6)
    assert torch.allclose(ours.running_var, ref.running_var, atol=1e-4, rtol=1e-5)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)
    assert g[0].is_contiguous(memory_format=fmt)  # the input gradient too
    ours.eval(), ref.eval()  # eval: the running statistics, no collective
    y_ref, g_ref = _run(ref, x, dy)
    y, g = _run(ours, x, dy)
    assert (y - y_ref).abs().max() < 2e-5 and (g[0] - g_ref[0]).abs().max() < 5e-5
    assert y.is_contiguous(memory_format=fmt)


def test_two_thread_ranks_equal_batchnorm_over_the_whole_batch():
    world = 2
    ranks = ThreadRanks(world)
    ref, _ = _pair()
    layers = []
    for r in range(world):
        layer = CollectiveBatchNorm(8, allreduce_sum=ranks.allreduce_for(r))
        layer.load_state_dict(ref.state_dict())
        layers.append(layer)
    torch.manual_seed(2)
    x = (torch.randn(8, 8, 6, 6) * 2 - 1).to(memory_format=torch.channels_last)
    dy = torch.randn(8, 8, 6, 6).to(memory_format=torch.channels_last)
    # Unequal shares (3 and 5 samples): the counts travel with the sums.
    parts = [slice(0, 3), slice(3, 8)]
    out = [None] * world

    def rank(r):
        out[r] = _run(layers[r], x[parts[r]], dy[parts[r]])

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    y_ref, (gx_ref, gw_ref, gb_ref) = _run(ref, x, dy)
    y = torch.cat([out[r][0] for r in range(world)])
    gx = torch.cat([out[r][1][0] for r in range(world)])
    assert (y - y_ref).abs().max() < 2e-5
    assert (gx - gx_ref).abs().max() < 5e-5
    # Weight and bias gradients are per rank (the optimizer's allreduce sums/averages them).
    gw = sum(out[r][1][1] for r in range(world))
    gb = sum(out[r][1][2] for r in range(world))
    assert (gw - gw_ref).abs().max() < 1e-4 and (gb - gb_ref).abs().max() < 1e-4
    for r in range(world):
        assert torch.allclose(layers[r].running_mean, ref.running_mean, atol=1e-6)
        assert torch.allclose(layers[r].running_var, ref.running_var, atol=1e-5)
        assert out[r][0].is_contiguous(memory_format=torch.channels_last)
    # One collective forward (2C+1 float64 values), one backward (2C float32 values).
    assert [(n.rsplit(".", 1)[1], d, s) for n, d, s in ranks.calls] == [
        ("fwd", torch.float64, (17,)),
        ("bwd", torch.float32, (16,)),
    ]


def test_bf16_input_keeps_its_dtype_and_matches_fp32_batchnorm():
    ref, ours = _pair()
    torch.manual_seed(3)
    x = torch.randn(4, 8, 6, 6).to(torch.bfloat16).to(memory_format=torch.channels_last)
    y = ours(x)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    y_ref = ref(x.float())
    assert (y.float() - y_ref).abs().max() < 0.05  # bf16 output rounding (8-bit mantissa)
