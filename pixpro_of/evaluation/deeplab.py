"""Frozen ResNet backbone and the segmentation heads (DeepLabV3 with ASPP, or a linear probe)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pixpro_of.transfer.encoder_state import complete_trunk_state
from plumbing.errors import UserError

C5_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}


def dilate_res5(net: nn.Module, dilation: int = 2, multi_grid: Sequence[int] = (1, 2, 4)) -> None:
    """Turn a torchvision ResNet's ``layer4`` into output stride 16 with multi-grid dilations (in place)."""
    blocks = list(net.layer4)
    if len(multi_grid) < len(blocks):
        raise UserError(f"multi_grid {tuple(multi_grid)} has fewer factors than res5's {len(blocks)} blocks")
    for i, block in enumerate(blocks):
        d = int(dilation) * int(multi_grid[i])
        convs = [block.conv2] if hasattr(block, "conv3") else [block.conv1, block.conv2]
        for conv in convs:
            conv.dilation, conv.padding = (d, d), (d, d)
            conv.stride = (1, 1)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


class FrozenBackbone(nn.Module):
    """A torchvision ResNet trunk, frozen: no gradients, BN always in inference mode (FrozenBN).

    ``forward(x)`` returns C5 ``[B, C, H/os, W/os]`` computed under ``torch.no_grad()``.
    """

    def __init__(
        self, arch: str, state: Dict[str, torch.Tensor], output_stride: int = 16, multi_grid: Sequence[int] = (1, 2, 4)
    ):
        super().__init__()
        import torchvision

        if output_stride not in (16, 32):
            raise UserError(f"--output-stride must be 16 or 32, got {output_stride}")
        net = getattr(torchvision.models, arch)(weights=None)
        net.fc = nn.Identity()
        net.load_state_dict(complete_trunk_state(dict(state), arch, "backbone"), strict=True)
        if output_stride == 16:
            dilate_res5(net, 2, multi_grid)
        self.arch, self.output_stride, self.out_channels = arch, output_stride, C5_CHANNELS[arch]
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        return super().train(False)  # BN statistics stay frozen whatever the caller asks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"backbone input should have shape [B, 3, H, W], got {tuple(x.shape)}")
        with torch.no_grad():
            return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def _conv_bn_relu(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    conv = nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)  # detectron2's c2_xavier_fill
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``[B, cin, h, w]`` -> ``[B, cout, h, w]`` (see module doc)."""

    def __init__(
        self,
        cin: int,
        cout: int = 256,
        dilations: Sequence[int] = (6, 12, 18),
        pool_kernel: Optional[Tuple[int, int]] = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, cout, 1)] + [_conv_bn_relu(cin, cout, 3, d) for d in dilations]
        )
        self.pool_kernel = None if pool_kernel is None else (int(pool_kernel[0]), int(pool_kernel[1]))
        self.pool_conv = nn.Conv2d(cin, cout, 1, bias=True)
        nn.init.kaiming_uniform_(self.pool_conv.weight, a=1)
        nn.init.zeros_(self.pool_conv.bias)
        self.project = _conv_bn_relu(cout * (len(dilations) + 2), cout, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        outs = [b(x) for b in self.branches]
        if self.pool_kernel is None:
            pooled = F.adaptive_avg_pool2d(x, 1)
        else:  # detectron2: AvgPool2d(kernel, stride=1); kernel clamped to the map here
            pooled = F.avg_pool2d(x, (min(self.pool_kernel[0], h), min(self.pool_kernel[1], w)), stride=1)
        pooled = F.relu(self.pool_conv(pooled))
        outs.append(F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False))
        return self.dropout(self.project(torch.cat(outs, dim=1)))


def _predictor(cin: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, num_classes, 1)
    nn.init.normal_(conv.weight, 0.0, 0.001)
    nn.init.zeros_(conv.bias)
    return conv


class DeepLabV3Head(nn.Module):
    """ASPP then a 1x1 predictor: C5 ``[B, C, h, w]`` -> logits ``[B, K, h, w]``."""

    def __init__(
        self,
        cin: int,
        num_classes: int = 19,
        channels: int = 256,
        dilations: Sequence[int] = (6, 12, 18),
        pool_kernel: Optional[Tuple[int, int]] = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.aspp = ASPP(cin, channels, dilations, pool_kernel, dropout)
        self.predictor = _predictor(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.aspp(x))


class LinearHead(nn.Module):
    """Linear probe: one 1x1 conv, C5 ``[B, C, h, w]`` -> logits ``[B, K, h, w]``."""

    def __init__(self, cin: int, num_classes: int = 19):
        super().__init__()
        self.predictor = _predictor(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(x)


class SegmentationModel(nn.Module):
    """Frozen backbone + trainable head; ``forward(x [B,3,H,W]) -> logits [B, K, H, W]``."""

    def __init__(self, backbone: FrozenBackbone, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_model(
    arch: str,
    state: Dict[str, torch.Tensor],
    mode: str = "deeplab",
    num_classes: int = 19,
    crop: Tuple[int, int] = (512, 1024),
    output_stride: int = 16,
    multi_grid: Sequence[int] = (1, 2, 4),
) -> SegmentationModel:
    """The seed's frozen-backbone DeepLabV3 (``mode="deeplab"``) or the linear probe (``"linear"``).

    ``crop`` (height, width) sets the ASPP image-pooling kernel to ``crop / output_stride``.
    """
    backbone = FrozenBackbone(arch, state, output_stride, multi_grid)
    if mode == "deeplab":
        kernel = (-(-crop[0] // output_stride), -(-crop[1] // output_stride))
        head = DeepLabV3Head(backbone.out_channels, num_classes, pool_kernel=kernel)
    elif mode == "linear":
        head = LinearHead(backbone.out_channels, num_classes)
    else:
        raise UserError(f"--mode must be deeplab or linear, got {mode!r}")
    return SegmentationModel(backbone, head)
