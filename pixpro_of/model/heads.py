"""Heads on the C5 map: the projector (``MLP2d``) and the pixel propagation module (PPM).

All heads are 1×1 convolutions, so they work on ``[B, C, H, W]`` maps of any size and on
channels_last tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv1x1(nn.Conv2d):
    """A 1×1 convolution (same parameters, init and state-dict keys as ``nn.Conv2d(k=1)``) computed
    as one matrix product over all pixels.

    On CPU, PyTorch sends small-map 1×1 convolutions with bias to its slow im2col path (~10x slower
    than the equivalent GEMM on a 7×7 map); the matmul form is fast on CPU and GPU alike. The output
    is channels_last-strided ``[B, out, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = F.linear(x.permute(0, 2, 3, 1).reshape(b * h * w, c), self.weight.view(self.out_channels, c), self.bias)
        return y.view(b, h, w, self.out_channels).permute(0, 3, 1, 2)


class Projector(nn.Module):
    """``conv1x1(in→hidden, bias) → BN(hidden) → ReLU → conv1x1(hidden→out, bias)`` (seed ``MLP2d``).

    ``[B, in_dim, H, W]`` → ``[B, out_dim, H, W]``. Default PyTorch init for the convolutions,
    BN γ = 1, β = 0, as in the seed.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256):
        super().__init__()
        self.linear1 = Conv1x1(in_dim, hidden_dim)
        self.bn1 = nn.BatchNorm2d(hidden_dim)
        self.relu1 = nn.ReLU(inplace=True)
        self.linear2 = Conv1x1(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.relu1(self.bn1(self.linear1(x))))


class PixelPropagation(nn.Module):
    """Pixel propagation module (PPM; seed ``featprop``), seed-system.md §2.1.

    For a projected map ``z [B, C, H, W]``:

    - value ``v = normalize(value_transform(z))`` over channels; ``value_transform`` is the
      identity (``layers=0``), one ``conv1x1(C→C, bias)`` (``layers=1``, the default), or a
      ``C→C→C`` MLP with BN and ReLU (``layers=2``);
    - similarity ``S_ij = clamp(cos(z_i, z_j), min=0) ** gamma`` over all HW×HW cell pairs
      (diagonal included, no softmax, no row normalisation);
    - output ``y_i = Σ_j S_ij v_j`` as ``[B, C, H, W]`` (not normalised; the caller normalises).
    """

    def __init__(self, dim: int = 256, layers: int = 1, gamma: float = 2.0):
        super().__init__()
        if layers == 0:
            self.value_transform: nn.Module = nn.Identity()
        elif layers == 1:
            self.value_transform = Conv1x1(dim, dim)
        elif layers == 2:
            self.value_transform = Projector(dim, dim, dim)
        else:
            raise ValueError(f"PPM value-transform layers should be 0, 1 or 2, got {layers}")
        self.gamma = float(gamma)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        value = F.normalize(self.value_transform(z), dim=1).flatten(2)  # [B, C, HW]
        key = F.normalize(z, dim=1).flatten(2)  # [B, C, HW]
        sim = torch.bmm(key.transpose(1, 2), key).clamp(min=0)  # [B, HW, HW]
        if self.gamma < 1.0:
            sim = sim + 1e-6  # as the seed: keeps the gradient of x**p finite at 0
        sim = sim.pow(self.gamma)
        out = torch.bmm(value, sim.transpose(1, 2))  # y_i = sum_j S_ij v_j  -> [B, C, HW]
        return out.reshape(b, c, h, w)
