"""The ANNs that ANN-to-SNN conversion accepts: VGG-style and ResNet-style CNNs built from conv, batch
norm, ReLU, average pooling and linear layers.

Oezdenizci & Legenstein (TMLR 2024), "Adversarially robust spiking neural networks through conversion"
(IGITUGraz/RobustSNNConversion ``models/VGG.py``, ``models/ResNet.py``): conv-BN-ReLU blocks, average
instead of max pooling (a spike-friendly linear operation), and a final linear readout. The residual
block is the basic block of He et al. (CVPR 2016):

    out = ReLU( BN(conv(ReLU(BN(conv(x))))) + shortcut(x) ),   shortcut = identity or BN(conv1x1(x))

Any ``nn.Sequential`` of the supported layers converts (``convert.SUPPORTED``); these builders make the
usual shapes. Weights are drawn from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _validate

__all__ = ["ResidualBlock", "vgg_cnn", "resnet_cnn", "basic_block"]


class ResidualBlock(nn.Module):
    """``ReLU(body(x) + shortcut(x))``; ``shortcut=None`` is the identity."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(body, nn.Sequential):
            raise ValueError(f"body must be an nn.Sequential, got {type(body).__name__}")
        if shortcut is not None and not isinstance(shortcut, nn.Module):
            raise ValueError(f"shortcut must be an nn.Module or None, got {type(shortcut).__name__}")
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def _init_(module: nn.Module, generator: torch.Generator) -> None:
    """Kaiming-normal conv/linear weights (fan-out for convs as torchvision), zero biases, unit BN."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan = m.weight[0].numel() if isinstance(m, nn.Linear) else m.out_channels * m.weight[0, 0].numel()
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (2.0 / fan) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def vgg_cnn(
    in_channels: int,
    num_classes: int,
    image_size: int,
    *,
    features: tuple = (32, "A", 64, "A"),
    hidden: tuple[int, ...] = (),
    dropout: float = 0.0,
    generator: torch.Generator,
) -> nn.Sequential:
    """VGG-style CNN: ``features`` lists conv widths (conv3x3-BN-ReLU) and ``"A"`` (AvgPool 2x2); then
    Flatten, ``hidden`` linear-ReLU(-Dropout) layers and a linear readout.

    ``features=(64, "A", 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A")``, ``hidden=(4096, 4096)``,
    ``dropout=0.2`` is the paper's vgg11_bn on 32x32 images."""
    for name, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("image_size", image_size),
    ):
        _validate.positive_int(name, value)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    layers: list[nn.Module] = []
    c, size = in_channels, image_size
    for item in features:
        if item == "A":
            if size < 2:
                raise ValueError(f"features {features!r}: too many 'A' pools for image_size {image_size}")
            layers.append(nn.AvgPool2d(2))
            size //= 2
        elif isinstance(item, int) and not isinstance(item, bool) and item > 0:
            layers += _conv_bn_relu(c, item)
            c = item
        else:
            raise ValueError(f"features entries must be positive ints or 'A', got {item!r}")
    layers.append(nn.Flatten())
    n = c * size * size
    for width in hidden:
        _validate.positive_int("hidden width", width)
        layers += [nn.Linear(n, width), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        n = width
    layers.append(nn.Linear(n, num_classes))
    net = nn.Sequential(*layers)
    _init_(net, generator)
    return net


def basic_block(c_in: int, c_out: int, stride: int = 1) -> ResidualBlock:
    """He et al. basic block; a 1x1 conv-BN shortcut when the shape changes."""
    body = nn.Sequential(
        *_conv_bn_relu(c_in, c_out, stride),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
        nn.BatchNorm2d(c_out),
    )
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
    return ResidualBlock(body, shortcut)


def resnet_cnn(
    in_channels: int,
    num_classes: int,
    *,
    widths: tuple[int, ...] = (16, 32, 64),
    blocks: int = 1,
    generator: torch.Generator,
) -> nn.Sequential:
    """ResNet-style CNN (CIFAR ResNet of He et al.): conv-BN-ReLU stem, one stage per width with
    ``blocks`` basic blocks (stride 2 from the second stage on), global average pooling, linear readout.
    ``widths=(16, 32, 64), blocks=3`` is resnet20."""
    _validate.positive_int("in_channels", in_channels)
    _validate.positive_int("num_classes", num_classes)
    _validate.positive_int("blocks", blocks)
    if not widths:
        raise ValueError("widths must name at least one stage width, got ()")
    for w in widths:
        _validate.positive_int("widths entry", w)
    layers: list[nn.Module] = _conv_bn_relu(in_channels, widths[0])
    c = widths[0]
    for i, w in enumerate(widths):
        for b in range(blocks):
            layers.append(basic_block(c, w, 2 if (i > 0 and b == 0) else 1))
            c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    net = nn.Sequential(*layers)
    _init_(net, generator)
    return net
