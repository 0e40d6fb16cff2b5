"""The backbone: a torchvision ResNet cut after ``layer4`` so it returns the C5 feature map.

Shapes: input ``[B, 3, S, S]`` → C5 ``[B, C5, ceil(S/32), ceil(S/32)]`` (7×7 at S = 224), with
``C5 = 2048`` for ResNet-50 and ``512`` for ResNet-18/34.

Initialisation follows the seed (docs/original-system.md §2.1): convolutions ``N(0, sqrt(2 / (k·k·out)))``
(Kaiming normal, fan-out), BN γ = 1 and β = 0, and the last BN of every residual block zero-initialised
(torchvision's ``zero_init_residual=True``: ``bn3`` of a Bottleneck, ``bn2`` of a BasicBlock).
"""

from __future__ import annotations

import torch
from torch import nn

from pixpro_of.config import ARCHS  # model.arch's choices, owned by the config
from plumbing.errors import UserError

C5_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


class ResNetC5(nn.Module):
    """ResNet trunk (stem, layer1..layer4) without pooling or classifier.

    Module names match torchvision's ResNet (``conv1``, ``bn1``, ``layer1`` … ``layer4``), so a
    state dict of this module uses torchvision key names (``convert`` relies on this).
    """

    def __init__(self, arch: str = "resnet50"):
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"model.arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, zero_init_residual=True)
        self.arch = arch
        self.out_channels = C5_CHANNELS[arch]
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"encoder input should have shape [B, 3, H, W], got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def c5_size(image_size: int) -> int:
    """Side of the C5 map for a square input of ``image_size`` pixels (7 for 224, 2 for 64)."""
    s = int(image_size)
    s = (s + 2 * 3 - 7) // 2 + 1  # conv1 7x7 stride 2 pad 3
    for _ in range(4):  # maxpool 3x3 s2 p1, then the stride-2 3x3 convs of layer2..layer4
        s = (s + 2 * 1 - 3) // 2 + 1
    return s


def build_encoder(arch: str) -> ResNetC5:
    """A freshly initialised ResNet trunk returning C5 (see the module docstring)."""
    return ResNetC5(arch)
