"""ResNet-18/34/50/101/152 (He et al., "Deep Residual Learning for Image Recognition", 2015).

Read top-down: helpers -> blocks -> network -> builders. Parameter and buffer names follow
torchvision's ``models/resnet.py`` so that a torchvision state_dict loads with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "STEMS",
]

STEMS = ("imagenet", "small")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding; no bias because a BatchNorm follows every conv."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution (bottleneck reduce/expand and projection shortcut)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34, paper Fig. 2 left)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        stride_on_1x1: bool = False,
    ) -> None:
        super().__init__()
        # stride_on_1x1 has no meaning here: the first conv is already the strided 3x3.
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)  # ReLU after the addition (paper Sec. 3.2)
        return out


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (ResNet-50/101/152, paper Fig. 5 right).

    The paper puts the stride on the first 1x1 conv; torchvision ("ResNet v1.5") puts it on
    the 3x3, which throws away less information and is ~0.5% more accurate on ImageNet. v1.5 is the default.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        stride_on_1x1: bool = False,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_on_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)
        return out


Block = type[BasicBlock | Bottleneck]


class ResNet(nn.Module):
    """The network of paper Table 1: stem, four stages (layer1..4), global average pool, fc head.

    Args:
        block: BasicBlock or Bottleneck.
        layers: blocks per stage, e.g. [3, 4, 6, 3] for ResNet-50.
        num_classes: size of the fc head.
        stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool, for >=128 px) or "small" (3x3/1 conv + 3x3/2
            max-pool; keeps 4x more resolution for 32-128 px images).
        stride_on_1x1: put the bottleneck stride on the first 1x1 (paper/seed, "v1") instead of the 3x3.
        zero_init_residual: zero the last BN's gamma in each block so every block starts as identity
            (Goyal et al. 2017); helps large-batch and from-scratch training.
        width: channels of the stem and of layer1 (64 in the paper); stages double it. Small values make
            tiny models for tests.
    """

    def __init__(
        self,
        block: Block,
        layers: list[int],
        num_classes: int = 1000,
        stem: str = "imagenet",
        stride_on_1x1: bool = False,
        zero_init_residual: bool = False,
        width: int = 64,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; expected one of {', '.join(STEMS)}")
        self.inplanes = width
        self.stride_on_1x1 = stride_on_1x1
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = width * 8 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # Projection shortcut (paper option B) only where the shape changes; identity elsewhere.
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.stride_on_1x1)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, stride_on_1x1=self.stride_on_1x1))
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and the four stages: the feature map before pooling, (N, num_features, H/32, W/32)."""
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool and fc; with pre_logits, the pooled features without the fc."""
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh one for num_classes (0 gives an identity: features out)."""
        device = self.fc.weight.device if isinstance(self.fc, nn.Linear) else None
        self.fc = (
            nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        )


def _resnet(block: Block, layers: list[int], **kwargs) -> ResNet:
    return ResNet(block, layers, **kwargs)


def resnet18(**kwargs) -> ResNet:
    """ResNet-18: BasicBlock, [2, 2, 2, 2]."""
    return _resnet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs) -> ResNet:
    """ResNet-34: BasicBlock, [3, 4, 6, 3]."""
    return _resnet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50: Bottleneck, [3, 4, 6, 3]."""
    return _resnet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101: Bottleneck, [3, 4, 23, 3]."""
    return _resnet(Bottleneck, [3, 4, 23, 3], **kwargs)


def resnet152(**kwargs) -> ResNet:
    """ResNet-152: Bottleneck, [3, 8, 36, 3]."""
    return _resnet(Bottleneck, [3, 8, 36, 3], **kwargs)
