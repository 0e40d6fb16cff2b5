"""The process-wide torch settings a run trains under: threads, denormals, TF32, the CPU
allocator, and deterministic kernels (``run.deterministic``) or cuDNN's autotuner."""

from __future__ import annotations

import os

import torch

from pixpro_of.config import TrainConfig


def configure_torch(cfg: TrainConfig, device: torch.device) -> None:
    """Set torch up for ``cfg`` on ``device`` (once per process, before the model is built)."""
    r = cfg.run
    if r.threads > 0:
        torch.set_num_threads(r.threads)
    # Subnormal floats (tiny activations late in training) run ~10x slower on x86 CPUs;
    # flushing them to zero is what GPUs do anyway. No effect on CUDA kernels.
    torch.set_flush_denormal(True)
    from pixpro_of.train.precision import set_tf32

    set_tf32(cfg.optim.tf32)  # fp32 matmuls and convolutions on TF32 tensor cores (CUDA only)
    if device.type == "cpu":
        from pixpro_of.train.allocator import keep_freed_memory

        keep_freed_memory()  # no page faults for re-allocated activations (~10 % of a CPU step)
    if r.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True
