"""The model zoo of ``asyncddp bench MODEL``: torchvision's models when importable, else our own.

torchvision is not a dependency (its wheels pin a torch build), so ResNet-18/50 (the standard
BasicBlock / Bottleneck layout of He et al., 11.7M / 25.6M parameters at 1000 classes), VGG-16
(configuration D with batch norm omitted, as torchvision's ``vgg16``), MobileNetV3-Large (Table 1 of
Howard et al. 2019, 5.48M parameters, as torchvision's ``mobilenet_v3_large``), a small ViT-style
transformer encoder and an MLP are defined here in plain torch. Every model maps (B, 3, S, S) images
to 1000 logits and works for any S ≥ 32 (adaptive pooling before the head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asyncddp.bench.results import BenchError

__all__ = ["build_model", "NUM_CLASSES"]

NUM_CLASSES = 1000


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = _downsample(channels_in, channels, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class _Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision's "ResNet v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(channels_in, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = _downsample(channels_in, out, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.downsample(x))


def _downsample(channels_in: int, channels_out: int, stride: int) -> nn.Module:
    if stride == 1 and channels_in == channels_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out))


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 stem + max-pool, four stages (64..512 wide), global pool, linear head."""

    def __init__(self, block, layers: tuple[int, ...], num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        stages, channels = [], 64
        for index, num_blocks in enumerate(layers):
            width = 64 * 2**index
            for b in range(num_blocks):
                stages.append(block(channels, width, 2 if index and b == 0 else 1))
                channels = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class VGG16(nn.Module):
    """VGG configuration D: 13 3x3 convolutions in five pooled stages, then 4096-4096-classes."""

    CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers, channels = [], 3
        for item in self.CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                                        nn.Linear(4096, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 7)
        return self.classifier(x.flatten(1))


class TransformerClassifier(nn.Module):
    """A small ViT-style encoder: 16x16 patches (8x8 below 128 px), 6 pre-norm layers of width 256."""

    def __init__(self, image_size: int, num_classes: int = NUM_CLASSES, width: int = 256, depth: int = 6,
                 heads: int = 8) -> None:
        super().__init__()
        patch = 16 if image_size >= 128 else 8
        num_tokens = (image_size // patch) ** 2
        self.embed = nn.Conv2d(3, width, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.randn(1, num_tokens + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.position
        return self.head(self.norm(self.encoder(tokens))[:, 0])


# MobileNetV3-Large's 15 bneck blocks (Table 1 of Howard et al. 2019, "Searching for MobileNetV3"):
# (kernel, expanded width, output width, squeeze-and-excite, hardswish (else ReLU), stride).
_MOBILENET_V3_LARGE = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)


def _round_width(width: float, divisor: int = 8) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``), bumped up if rounding lost over 10%."""
    rounded = max(divisor, int(width + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * width else rounded


def _conv_norm(channels_in: int, channels_out: int, kernel: int, stride: int = 1, groups: int = 1,
               activation: type[nn.Module] | None = None) -> nn.Sequential:
    """Bias-free "same" convolution + batch norm (TF's eps 1e-3 and decay 0.99) + optional activation."""
    layers = [nn.Conv2d(channels_in, channels_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(channels_out, eps=1e-3, momentum=0.01)]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class _SqueezeExcite(nn.Module):
    """Per-channel gates from the pooled features: 1x1 down to a quarter (rounded to 8), ReLU, 1x1 up, hardsigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = _round_width(channels / 4)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        gate = F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))
        return x * F.hardsigmoid(self.expand(gate))


class _InvertedResidual(nn.Module):
    """A bneck: 1x1 expand (absent when the expanded width is the input width), depthwise k x k carrying the
    stride, optional squeeze-and-excite, linear 1x1 projection; identity shortcut when the shape is kept."""

    def __init__(self, channels_in: int, kernel: int, expanded: int, channels_out: int, excite: bool,
                 hardswish: bool, stride: int) -> None:
        super().__init__()
        activation = nn.Hardswish if hardswish else nn.ReLU
        layers = [] if expanded == channels_in else [_conv_norm(channels_in, expanded, 1, activation=activation)]
        layers.append(_conv_norm(expanded, expanded, kernel, stride, groups=expanded, activation=activation))
        if excite:
            layers.append(_SqueezeExcite(expanded))
        layers.append(_conv_norm(expanded, channels_out, 1))  # no activation: a ReLU here would lose information
        self.body = nn.Sequential(*layers)
        self.shortcut = stride == 1 and channels_in == channels_out

    def forward(self, x):
        out = self.body(x)
        return x + out if self.shortcut else out


class MobileNetV3Large(nn.Module):
    """3x3/2 stem to 16 (hardswish), the 15 bnecks, 1x1 to 960 (hardswish), global pool, 1280 (hardswish) head."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers, channels = [_conv_norm(3, 16, 3, 2, activation=nn.Hardswish)], 16
        for kernel, expanded, channels_out, excite, hardswish, stride in _MOBILENET_V3_LARGE:
            layers.append(_InvertedResidual(channels, kernel, expanded, channels_out, excite, hardswish, stride))
            channels = channels_out
        layers.append(_conv_norm(channels, 960, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        # The paper's two 1x1 convolutions without batch norm after the pool are linear layers on the pooled vector.
        self.classifier = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(inplace=True), nn.Dropout(0.2),
                                        nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class MLP(nn.Module):
    """Images 8x8-pooled and flattened, two hidden layers of 1024, 1000 classes."""

    def __init__(self, num_classes: int = NUM_CLASSES, hidden: int = 1024) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(3 * 8 * 8, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                    nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.layers(F.adaptive_avg_pool2d(x, 8).flatten(1))


def _torchvision(name: str):
    try:
        import torchvision.models as tvm
    except ImportError:
        return None
    return getattr(tvm, "mobilenet_v3_large" if name == "mobilenet_v3" else name)


def build_model(name: str, image_size: int) -> nn.Module:
    """A freshly initialised ``name`` for ``image_size``² inputs (torchvision's when installed)."""
    from asyncddp.bench.results import MODELS

    if name not in MODELS:
        raise BenchError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    factory = _torchvision(name) if name in ("resnet18", "resnet50", "vgg16", "mobilenet_v3") else None
    if factory is not None:
        return factory(num_classes=NUM_CLASSES)
    if name == "resnet18":
        return ResNet(_BasicBlock, (2, 2, 2, 2))
    if name == "resnet50":
        return ResNet(_Bottleneck, (3, 4, 6, 3))
    if name == "vgg16":
        return VGG16()
    if name == "mobilenet_v3":
        return MobileNetV3Large()
    if name == "transformer":
        return TransformerClassifier(image_size)
    if name == "mlp":
        return MLP()
    raise BenchError(f"model {name!r} is listed in asyncddp.bench.results.MODELS but has no definition "
                     "in asyncddp.bench_ranks.models")
