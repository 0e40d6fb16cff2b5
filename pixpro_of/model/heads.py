"""Heads on the C5 map: the projector (``MLP2d``) and the pixel propagation module (PPM).

All heads are 1×1 convolutions, so they work on ``[B, C, H, W]`` maps of any size and on
channels_last tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_UNSET = object()
_LINEAR_POINTWISE: object = _UNSET  # the oneDNN op once looked up; None where unavailable


def _onednn_linear():
    """``torch.ops.mkldnn._linear_pointwise`` (oneDNN's float32 matmul with fused bias, the op
    inductor uses for CPU linears), or None where this build of PyTorch lacks it or it does not
    give ``F.linear``'s result on a small check (it is a private op: its signature may change).
    Looked up and checked once, with fixed values (no random state is used)."""
    global _LINEAR_POINTWISE
    if _LINEAR_POINTWISE is _UNSET:
        op = None
        if torch.backends.mkldnn.is_available():
            try:
                op = torch.ops.mkldnn._linear_pointwise
                with torch.no_grad():
                    x = torch.linspace(-1.0, 1.0, 35).view(5, 7)
                    w = torch.linspace(-2.0, 0.5, 21).view(3, 7)
                    b = torch.tensor([0.5, -1.0, 2.0])
                    ok = torch.allclose(
                        op(x, w, b, "none", [], ""), F.linear(x, w, b), rtol=1e-5, atol=1e-5
                    ) and torch.allclose(op(x.t(), x.t(), None, "none", [], ""), x.t() @ x, rtol=1e-5, atol=1e-5)
                op = op if ok else None
            except (AttributeError, RuntimeError, TypeError):
                op = None
        _LINEAR_POINTWISE = op
    return _LINEAR_POINTWISE


def _mm_onednn(a: torch.Tensor, b_t: torch.Tensor, bias=None) -> torch.Tensor:
    """``a @ b_t.T (+ bias)`` for float32 CPU matrices ``a [M, K]``, ``b_t [N, K]`` → ``[M, N]``
    (contiguous), through oneDNN; ``a`` and ``b_t`` may be transposed views (no copy needed)."""
    return _onednn_linear()(a, b_t, bias, "none", [], "")


class _LinearOneDNN(torch.autograd.Function):
    """``y = x @ W.T + b`` with the forward and both backward products on oneDNN.

    ``x [M, K]``, ``W [N, K]``, ``b [N]`` or None → ``y [M, N]``. Backward: ``dx = dy @ W``,
    ``dW = dy.T @ x``, ``db = dy.sum(0)`` (each computed only when needed).
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm_onednn(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _mm_onednn(grad_y, weight.t())  # [M, N] @ [N, K]
        if ctx.needs_input_grad[1]:
            grad_w = _mm_onednn(grad_y.t(), x.t())  # [N, M] @ [M, K]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum(0)
        return grad_x, grad_w, grad_b


def pointwise_linear(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x [M, K]``, ``weight [N, K]``; float32 CPU products go
    to oneDNN (see :class:`Conv1x1`), everything else (CUDA, other dtypes, autocast, oneDNN
    switched off with ``torch.backends.mkldnn.flags(enabled=False)``, and code traced by
    ``torch.compile``, which picks its own CPU kernels) to ``F.linear``."""
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.enabled
        and not torch.compiler.is_compiling()
        and _onednn_linear() is not None
    ):
        return _LinearOneDNN.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Conv1x1(nn.Conv2d):
    """A 1×1 convolution (same parameters, init and state-dict keys as ``nn.Conv2d(k=1)``) computed
    as one matrix product over all pixels: ``[B·H·W, in] @ [in, out]``.

    Why not ``nn.Conv2d``: on CPU, PyTorch sends small-map 1×1 convolutions with bias on NCHW inputs
    to its slow im2col path (~10x slower than the GEMM on a 7×7 map). Why not plain ``F.linear`` on
    CPU: ``aten::mm``/``addmm`` go to MKL, which on the AMD EPYC development machine runs these
    shapes (M = 392 pixels of 8 images, K/N = 256…4096) at ~48 GMAC/s on one thread, against
    ~100 GMAC/s for oneDNN's matmul (the library ``mkldnn_convolution`` already uses for the
    encoder); a channels_last ``F.conv2d`` reaches oneDNN too but picks a slower kernel at this M
    (~40 GMAC/s). So float32 CPU tensors use oneDNN's matmul for the forward and both backward
    products (:func:`pointwise_linear`); CUDA (cuBLAS), other dtypes and autocast use ``F.linear``.
    The output is channels_last-strided ``[B, out, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = pointwise_linear(
            x.permute(0, 2, 3, 1).reshape(b * h * w, c), self.weight.view(self.out_channels, c), self.bias
        )
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
    """Pixel propagation module (PPM; seed ``featprop``), docs/original-system.md §2.1.

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
