"""Synchronised batch norm that works on any device and any backend, plus the module converter."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

AllreduceSum = Callable[[torch.Tensor, str], torch.Tensor]
"""``allreduce_sum(tensor, name) -> tensor`` summed over all ranks (a new tensor)."""


class _CollectiveBN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, training, allreduce, name):
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float()  # keeps the memory format (channels_last stays channels_last)
        if training:
            # Local per-channel statistics (Welford, so no cancellation within a rank), turned into
            # sums in float64 for the one collective: [sum x, sum x^2, count].
            var_l, mean_l = torch.var_mean(xf, dim=dims, correction=0)
            n_l = float(x.numel() // c)
            mean_l, var_l = mean_l.double(), var_l.double()
            local = torch.cat(
                [
                    mean_l * n_l,
                    (var_l + mean_l * mean_l) * n_l,
                    torch.full((1,), n_l, dtype=torch.float64, device=x.device),
                ]
            )
            total = allreduce(local, f"{name}.fwd")
            n = total[2 * c]
            mean64 = total[:c] / n
            var64 = (total[c : 2 * c] / n - mean64 * mean64).clamp_min(0.0)
            if running_mean is not None:
                with torch.no_grad():
                    unbiased = var64 * (n / (n - 1).clamp_min(1.0))
                    running_mean.mul_(1 - momentum).add_(mean64.to(running_mean.dtype), alpha=momentum)
                    running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
            mean, var = mean64.float(), var64.float()
            n = n.float()
        else:
            mean, var, n = running_mean.float(), running_var.float(), None
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.float()
        shift = -mean * scale if bias is None else bias.float() - mean * scale
        y = torch.addcmul(shift.view(shape), xf, scale.view(shape))  # one pass, in x's layout
        # Saved: the input (as nn.BatchNorm saves it) and per-channel vectors; x_hat is recomputed
        # in the backward pass, so no extra activation-sized tensor lives until then.
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n = n
        ctx.training = training
        ctx.allreduce = allreduce
        ctx.name = name
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        dyf = dy.float()
        scale = invstd if weight is None else invstd * weight.float()
        if not ctx.training:
            dx = dyf * scale.view(shape)
            if weight is None:
                return dx.to(dy.dtype), None, None, None, None, None, None, None, None, None
            x_hat = (x.float() - mean.view(shape)) * invstd.view(shape)
            return (
                dx.to(dy.dtype),
                (dyf * x_hat).sum(dims).to(weight.dtype),
                dyf.sum(dims).to(weight.dtype),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            )
        x_hat = (x.float() - mean.view(shape)) * invstd.view(shape)
        sum_dy = dyf.sum(dims)
        sum_dy_xhat = (dyf * x_hat).sum(dims)
        total = ctx.allreduce(torch.cat([sum_dy, sum_dy_xhat]), f"{ctx.name}.bwd")
        n = ctx.n
        mean_dy = (total[:c] / n).view(shape)
        mean_dy_xhat = (total[c:] / n).view(shape)
        # dx = (dy - mean(dy) - x_hat * mean(dy * x_hat)) * scale, written in place on x_hat's buffer
        dx = x_hat.mul_(-mean_dy_xhat).add_(dyf).sub_(mean_dy).mul_(scale.view(shape))
        grad_weight = grad_bias = None
        if weight is not None:
            grad_weight = sum_dy_xhat.to(weight.dtype)
            grad_bias = sum_dy.to(weight.dtype)
        return dx.to(dy.dtype), grad_weight, grad_bias, None, None, None, None, None, None, None


class CollectiveBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics span every rank (any device; see the module docstring).

    ``allreduce_sum`` is attached after construction (it is not part of the state dict), so the
    layer's parameters and buffers keep the names of the ``BatchNorm`` it replaces.
    """

    _counter = 0

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        allreduce_sum: Optional[AllreduceSum] = None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.allreduce_sum = allreduce_sum
        CollectiveBatchNorm._counter += 1
        self._sync_name = f"syncbn.{CollectiveBatchNorm._counter}"

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        use_batch_stats = self.training or not self.track_running_stats
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.momentum is None:
            momentum = 1.0 / float(self.num_batches_tracked) if self.training and self.track_running_stats else 0.0
        else:
            momentum = self.momentum
        if self.allreduce_sum is None:
            # No collective attached: plain batch norm (e.g. the module was built outside a backend).
            return F.batch_norm(
                x,
                self.running_mean if not self.training or self.track_running_stats else None,
                self.running_var if not self.training or self.track_running_stats else None,
                self.weight,
                self.bias,
                use_batch_stats,
                momentum,
                self.eps,
            )
        running_mean = self.running_mean if self.track_running_stats else None
        running_var = self.running_var if self.track_running_stats else None
        return _CollectiveBN.apply(
            x,
            self.weight,
            self.bias,
            running_mean,
            running_var,
            self.eps,
            momentum,
            use_batch_stats,
            self.allreduce_sum,
            self._sync_name,
        )


def convert_batchnorm(module: nn.Module, factory: Callable[[nn.modules.batchnorm._BatchNorm], nn.Module]) -> nn.Module:
    """Replace every ``BatchNorm{1,2,3}d`` in ``module`` by ``factory(bn)``, keeping weights and buffers.

    ``factory`` builds the new layer from the old one; its state is then loaded from the old
    layer's state dict (strict), so names and values are preserved. Returns the (possibly new)
    root module; children are replaced in place.
    """
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if isinstance(module, bn_types):
        new = factory(module)
        new.load_state_dict(module.state_dict(), strict=True)
        new.train(module.training)
        for p_new, p_old in zip(new.parameters(), module.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        return new.to(next((t.device for t in module.state_dict().values()), torch.device("cpu")))
    for name, child in list(module.named_children()):
        new_child = convert_batchnorm(child, factory)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def collective_bn_factory(allreduce_sum: AllreduceSum) -> Callable[[nn.modules.batchnorm._BatchNorm], nn.Module]:
    """A :func:`convert_batchnorm` factory for :class:`CollectiveBatchNorm` bound to ``allreduce_sum``."""

    def make(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
        return CollectiveBatchNorm(
            bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, allreduce_sum=allreduce_sum
        )

    return make
