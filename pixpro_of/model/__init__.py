"""PixPro model: ResNet encoder (C5), projector, pixel propagation module, momentum branch."""
from pixpro_of.model.pixpro import ModelConfig, PixPro, momentum_at

__all__ = ["ModelConfig", "PixPro", "momentum_at"]
