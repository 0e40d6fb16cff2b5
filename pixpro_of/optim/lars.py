"""LARS with the seed's semantics (docs/original-system.md §2.2; the seed wrapped ``SGD(momentum=0.9)``)."""

from __future__ import annotations

from typing import Dict, Iterable, List

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling on top of SGD with momentum (see module docstring)."""

    # lr has a default because Horovod's DistributedOptimizer re-creates the optimizer from its
    # param groups alone (each group carries its own lr, so the default is never used then).
    def __init__(
        self,
        params,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coef: float = 0.001,
        eps: float = 1e-8,
    ):
        if lr < 0:
            raise ValueError(f"lr should be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum should be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay should be >= 0, got {weight_decay}")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coef=trust_coef, eps=eps, lars_exclude=False
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["lars_exclude"]:
                updates = list(grads)
            else:
                wd = group["weight_decay"]
                updates = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else [g.clone() for g in grads]
                p_norms = torch._foreach_norm(params)
                d_norms = torch._foreach_norm(updates)
                scales = []
                for pn, dn in zip(p_norms, d_norms):
                    ok = (pn > 0) & (dn > 0)
                    scales.append(torch.where(ok, group["trust_coef"] * pn / (dn + group["eps"]), torch.ones_like(pn)))
                torch._foreach_mul_(updates, scales)
            mom = group["momentum"]
            steps = []
            for p, d in zip(params, updates):
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None or mom == 0:
                    buf = torch.clone(d).detach()
                    state["momentum_buffer"] = buf
                else:
                    buf.mul_(mom).add_(d)
                steps.append(buf)
            torch._foreach_add_(params, steps, alpha=-group["lr"])
        return loss


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> List[Dict]:
    """Split the trainable parameters of ``modules`` into the seed's two groups.

    Returns ``[{'params': weights, 'weight_decay': weight_decay, 'lars_exclude': False},
    {'params': biases_and_bn, 'weight_decay': 0.0, 'lars_exclude': True}]``, where the second group
    holds every 1-D parameter and every parameter whose name ends in ``.bias`` (seed
    ``add_weight_decay``). Order is deterministic (module order, then ``named_parameters`` order);
    a parameter shared between modules appears once.
    """
    decay: List[nn.Parameter] = []
    no_decay: List[nn.Parameter] = []
    seen = set()
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": float(weight_decay), "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]
