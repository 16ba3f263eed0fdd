"""The model zoo of ``asyncddp bench MODEL``: torchvision's models when importable, else our own.

torchvision is not a dependency (its wheels pin a torch build), so ResNet-18/50 (the standard
BasicBlock / Bottleneck layout of He et al., 11.7M / 25.6M parameters at 1000 classes), VGG-16
(configuration D with batch norm omitted, as torchvision's ``vgg16``), a small ViT-style transformer
encoder and an MLP are defined here in plain torch. MobileNetV3 is taken from torchvision only:
without it ``build_model`` raises a ``BenchError`` saying so. Every model maps (B, 3, S, S) images to
1000 logits and works for any S ≥ 32 (adaptive pooling before the head).
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
    if name == "transformer":
        return TransformerClassifier(image_size)
    if name == "mlp":
        return MLP()
    raise BenchError("bench mobilenet_v3 needs torchvision (not installed here, and not a dependency of "
                     "asyncddp because its wheels pin a torch build): pip install torchvision matching your torch")
