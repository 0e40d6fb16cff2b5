"""Transfer: read a pretrained online encoder out of a checkpoint and export it.

``load_encoder_state(path)`` returns the encoder's weights under torchvision ResNet key names;
:mod:`pixpro_of.transfer.convert` writes them for detectron2 (``.pkl``) or torchvision (``.pth``).
"""

from pixpro_of.transfer.encoder_state import EncoderState, infer_arch, load_encoder_state, trunk_keys

__all__ = ["EncoderState", "infer_arch", "load_encoder_state", "trunk_keys"]
