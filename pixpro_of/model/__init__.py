"""PixPro model: ResNet encoder (C5), projector, pixel propagation module, momentum branch.

The names below load :mod:`pixpro_of.model.pixpro` (and torch) on first use, so the package's
torch-free modules (:mod:`pixpro_of.model.memory`, the per-GPU memory estimate the launcher asks
for) import without it.
"""

__all__ = ["ModelConfig", "PixPro", "momentum_at"]


def __getattr__(name):
    if name in __all__:
        from pixpro_of.model import pixpro

        return getattr(pixpro, name)
    raise AttributeError(f"module 'pixpro_of.model' has no attribute {name!r}")
