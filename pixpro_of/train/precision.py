"""The fp32 precision of CUDA matmuls and convolutions (``optim.tf32``), set in one place.

torch 2.9 added ``torch.backends.cuda.matmul.fp32_precision`` / ``cudnn.conv.fp32_precision``
(``"tf32"`` or ``"ieee"``) and deprecated the ``allow_tf32`` flags; mixing the two spellings is
refused by newer torch. :func:`set_tf32` uses the new one where it exists, the flags otherwise,
so the trainer and the benches state the same precision on torch 2.x.
"""

from __future__ import annotations


def _new_api(torch) -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def set_tf32(on: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions on (``True``) or IEEE fp32 (``False``)."""
    import torch

    if _new_api(torch):
        value = "tf32" if on else "ieee"
        torch.backends.cuda.matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value
    else:
        torch.backends.cuda.matmul.allow_tf32 = bool(on)
        torch.backends.cudnn.allow_tf32 = bool(on)


def tf32_enabled() -> bool:
    """Whether fp32 matmuls and convolutions run on TF32 (as :func:`set_tf32` left them)."""
    import torch

    if _new_api(torch):
        return (
            torch.backends.cuda.matmul.fp32_precision == "tf32" and torch.backends.cudnn.conv.fp32_precision == "tf32"
        )
    return bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)
