"""The models of the papers, each starting with a :class:`Normalize` layer so eps stays in pixel units.

- ``cnn4``: GradAlign's single-layer CNN (Andriushchenko & Flammarion 2020,
  Sec. 4 and App. B): 4 convolutional filters of size 3x3 (stride 1, padding 1,
  with bias, as in their ``models.py``), ReLU, no pooling, one linear layer.
- ``small_cnn``: two conv-BatchNorm-ReLU-max-pool stages and a small MLP head
  (ours); 90% clean test accuracy on Fashion-MNIST after two epochs of standard
  training (Adam 1e-3, 30k images).
- ``preact_resnet18``: PreAct ResNet-18 (He et al. 2016, "Identity Mappings in
  Deep Residual Networks") as in Wong et al.'s fast_adversarial code, which the
  GradAlign, ZeroGrad and ATAS code copy: 3x3 stem, bias-free convolutions, a
  projection shortcut on the pre-activated input, final BatchNorm-ReLU, global
  average pooling. (GradAlign's copy drops the final BatchNorm-ReLU; we keep
  Wong's.)
- ``resnet18``: the post-activation ResNet-18 for 32x32 images (He et al. 2016, "Deep Residual
  Learning for Image Recognition") in its CIFAR form, the model of the FastAT Benchmark (Pan & Yao
  2026): 3x3 stride-1 stem with BatchNorm-ReLU, basic blocks Conv-BN-ReLU-Conv-BN plus a shortcut
  (1x1 conv + BN when the shape changes), ReLU after the sum, global average pooling. The benchmark
  feeds unnormalised [0, 1] images; here the ``Normalize`` layer comes first as in every codiag model
  (a per-channel affine map of the input, followed by the stem's BatchNorm).
- ``wrn28_10`` / ``wrn34_10``: WideResNet (Zagoruyko & Komodakis 2016) as in
  the TRADES / Rice et al. code that ATAS and APART use (dropout 0 by default).

torchvision has neither: its ``resnet18`` is the post-activation ImageNet model
(7x7 stride-2 stem and max-pool, which shrinks a 32x32 image to 8x8 before the
first block) and its ``wide_resnet50_2`` is an ImageNet bottleneck network; so
the CIFAR-style models are written here. Global average pooling is adaptive, so
the same models run on 28x28 and 32x32 inputs (at 32x32 it equals the
references' fixed pooling).

Residual models expose ``model.blocks``, the residual blocks in forward order
(APART perturbs their inputs). :func:`first_conv` finds the first-layer filters
(the ``filters`` probe, GradAlign Fig. 5).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import dataset_spec
from .errors import UsageError

__all__ = ["MODELS", "build_model", "first_conv", "Normalize", "cnn4", "small_cnn", "small_cnn_w16", "PreActBlock",
           "PreActResNet", "preact_resnet18", "BasicBlock", "ResNet", "resnet18", "WideBasic", "WideResNet",
           "wrn28_10", "wrn34_10"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel. Mean and std are buffers: they follow ``.to(device)``,
    are saved with the weights and are never trained."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={tuple(self.mean.flatten().tolist())}, std={tuple(self.std.flatten().tolist())}"


# ---------------------------------------------------------------------------------------------
# small CNNs
# ---------------------------------------------------------------------------------------------
def cnn4(spec, n_filters: int = 4) -> nn.Sequential:
    """GradAlign's single-layer CNN: Conv(3x3, ``n_filters``, stride 1, padding 1, bias) - ReLU -
    Linear, with no pooling (Andriushchenko & Flammarion 2020, App. B "Training details for the
    single-layer CNN"; padding and bias as in their ``models.py``)."""
    return nn.Sequential(OrderedDict(
        normalize=Normalize(spec.mean, spec.std),
        conv=nn.Conv2d(spec.channels, n_filters, kernel_size=3, stride=1, padding=1, bias=True),
        relu=nn.ReLU(),
        flatten=nn.Flatten(),
        linear=nn.Linear(n_filters * spec.size * spec.size, spec.num_classes),
    ))


def small_cnn(spec, width: int = 32, hidden: int = 128) -> nn.Sequential:
    """Two stages of Conv(3x3) - BatchNorm - ReLU - MaxPool(2), then Linear - ReLU - Linear (ours).

    Small enough for CPU training on Fashion-MNIST (about 4 M multiply-adds per
    image) with room for real features, unlike ``cnn4``.
    """
    side = spec.size // 4
    return nn.Sequential(OrderedDict(
        normalize=Normalize(spec.mean, spec.std),
        conv1=nn.Conv2d(spec.channels, width, 3, padding=1, bias=False),  # bias-free: BatchNorm follows
        bn1=nn.BatchNorm2d(width),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        bn2=nn.BatchNorm2d(2 * width),
        relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
        fc1=nn.Linear(2 * width * side * side, hidden),
        relu3=nn.ReLU(),
        fc2=nn.Linear(hidden, spec.num_classes),
    ))


def small_cnn_w16(spec) -> nn.Sequential:
    """``small_cnn`` at half width (16 and 32 filters; ours): about a quarter of its multiply-adds,
    so that the embedded FastAT leaderboard's 63 runs take about two hours on 2 CPU cores."""
    return small_cnn(spec, width=16)


# ---------------------------------------------------------------------------------------------
# PreAct ResNet-18 (Wong et al. 2020, fast_adversarial/CIFAR10/preact_resnet.py)
# ---------------------------------------------------------------------------------------------
class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-Conv3x3-BN-ReLU-Conv3x3 plus a shortcut (He et al. 2016).

    The projection shortcut (1x1 conv, when the shape changes) reads the
    pre-activated input, as in Wong et al.'s code; the identity shortcut reads
    the raw input.
    """
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        # nn.Sequential keeps Wong's state_dict keys (shortcut.0.weight)
        self.shortcut = (nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))
                         if stride != 1 or in_planes != planes else None)
        # the residual branch after BN-ReLU, past the shortcut: where APART's code adds its
        # layer-wise noise (an identity, no weights)
        self.branch = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(self.branch(out))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """PreAct ResNet for 32x32-class images: 3x3 stem, four stages (64, 128, 256, 512 channels),
    final BN-ReLU, global average pooling, linear (Wong et al. 2020's model)."""

    def __init__(self, spec, num_blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.conv1 = nn.Conv2d(spec.channels, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            stride = 1 if i == 0 else 2
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(PreActBlock(in_planes, planes, s))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, spec.num_classes)

    @property
    def blocks(self) -> list[nn.Module]:
        """The residual blocks in forward order (a list, not a registered module: no duplicate weights)."""
        return [*self.layer1, *self.layer2, *self.layer3, *self.layer4]

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def preact_resnet18(spec) -> PreActResNet:
    """PreAct ResNet-18 (Wong et al. 2020; the model of GradAlign, ZeroGrad, ATAS and APART on CIFAR)."""
    return PreActResNet(spec, (2, 2, 2, 2))


# ---------------------------------------------------------------------------------------------
# ResNet-18, post-activation (He et al. 2016; the FastAT Benchmark's model)
# ---------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """Post-activation basic block: Conv3x3-BN-ReLU-Conv3x3-BN, plus the shortcut, then ReLU
    (He et al. 2016, Fig. 2; option B shortcut: 1x1 conv + BN where the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


class ResNet(nn.Module):
    """Post-activation ResNet for 32x32-class images: 3x3 stem with BN-ReLU, four stages (64, 128,
    256, 512 channels), global average pooling, linear."""

    def __init__(self, spec, num_blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.conv1 = nn.Conv2d(spec.channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for s in [1 if i == 0 else 2] + [1] * (n - 1):
                blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(512, spec.num_classes)

    @property
    def blocks(self) -> list[nn.Module]:
        """The residual blocks in forward order (a list, not a registered module: no duplicate weights)."""
        return [*self.layer1, *self.layer2, *self.layer3, *self.layer4]

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet18(spec) -> ResNet:
    """ResNet-18, post-activation, CIFAR form (the FastAT Benchmark's model)."""
    return ResNet(spec, (2, 2, 2, 2))


# ---------------------------------------------------------------------------------------------
# WideResNet (Zagoruyko & Komodakis 2016; TRADES / Rice et al. wideresnet.py)
# ---------------------------------------------------------------------------------------------
class WideBasic(nn.Module):
    """WideResNet basic block: BN-ReLU-Conv3x3-BN-ReLU-(dropout)-Conv3x3 plus a shortcut.

    Where the shape changes, the 1x1 projection shortcut reads the pre-activated
    input (the references overwrite ``x`` with ``relu(bn1(x))`` in that case).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = float(dropout)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
                         if stride != 1 or in_planes != planes else None)
        self.branch = nn.Identity()     # APART's layer-wise noise point, as in PreActBlock

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = F.relu(self.bn2(self.conv1(self.branch(out))))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen``: a 16-channel stem and three stages of (depth-4)/6 blocks with
    16k, 32k, 64k channels, final BN-ReLU, global average pooling, linear."""

    def __init__(self, spec, depth: int = 34, widen: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise UsageError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.normalize = Normalize(spec.mean, spec.std)
        self.conv1 = nn.Conv2d(spec.channels, 16, 3, stride=1, padding=1, bias=False)
        in_planes = 16
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(WideBasic(in_planes, planes, (1 if i == 0 else 2) if j == 0 else 1, dropout))
                in_planes = planes
            setattr(self, f"block{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, spec.num_classes)
        # the references' initialisation: He normal with fan_out for convolutions, zero linear bias
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def blocks(self) -> list[nn.Module]:
        """The residual blocks in forward order (a list, not a registered module: no duplicate weights)."""
        return [*self.block1, *self.block2, *self.block3]

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def wrn28_10(spec, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10 (Zagoruyko & Komodakis 2016)."""
    return WideResNet(spec, 28, 10, dropout)


def wrn34_10(spec, dropout: float = 0.0) -> WideResNet:
    """WRN-34-10 (Madry et al.'s and TRADES' robust-training model; ATAS, APART)."""
    return WideResNet(spec, 34, 10, dropout)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn4": cnn4,
    "small_cnn": small_cnn,
    "small_cnn_w16": small_cnn_w16,
    "preact_resnet18": preact_resnet18,
    "resnet18": resnet18,
    "wrn28_10": wrn28_10,
    "wrn34_10": wrn34_10,
}


def build_model(name: str, spec, **kwargs) -> nn.Module:
    """Model ``name`` for inputs described by ``spec`` (a DataSpec or a dataset name).

    The first layer is ``Normalize(spec.mean, spec.std)``; ``kwargs`` go to the
    builder (``n_filters`` for cnn4, ``dropout`` for the WideResNets ...).
    Weights are initialised from the global RNG, so seed it first.
    """
    if isinstance(spec, str):
        spec = dataset_spec(spec)
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    return MODELS[name](spec, **kwargs)


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    """The first ``nn.Conv2d`` of ``model`` in module order (GradAlign's "first layer" filters,
    Fig. 5 and 12), or None for a model without convolutions."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    return None
