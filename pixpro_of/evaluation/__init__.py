"""Downstream evaluation of pretrained backbones (``python -m pixpro_of eval ...``).

``seg``: frozen-backbone semantic segmentation on a Cityscapes-layout tree (the seed's DeepLabV3
transfer, or a fast linear probe), scored with cityscapesScripts' 19-class mIoU.
"""
