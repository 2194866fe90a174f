"""MobileNetV1 (Howard et al., 2017) and MobileNetV2 (Sandler et al., 2018) built on DepthwiseSeparableConv2d.

Every depthwise 3x3 conv and the 1x1 conv after it form one :class:`~sparsecomp.nn.DepthwiseSeparableConv2d`
(with both BNs, folded into the fused op at inference): in V1 the dw -> BN -> ReLU -> pw -> BN -> ReLU block, in
V2 the dw -> BN -> ReLU6 -> project -> BN tail of the inverted residual (its 1x1 expansion stays an nn.Conv2d).
``fused=False`` builds the same model (same state_dict keys) that always runs torch convs; :func:`to_torch` turns
any model into plain torch modules. The ``*_digits`` variants take 1x8x8 images (sparsecomp.datasets.digits).
"""
from __future__ import annotations

import copy

from torch import nn

from ..nn.separable import DepthwiseSeparableConv2d

__all__ = ["InvertedResidual", "mobilenet_v1", "mobilenet_v1_digits", "mobilenet_v2", "mobilenet_v2_digits",
           "to_torch"]

# (out_channels, stride) of V1's 13 separable blocks.
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
             (512, 1), (1024, 2), (1024, 1))
# (expansion t, out_channels c, repeats n, first stride s) of V2's bottleneck stages.
V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))


def _divisible(v: float, divisor: int = 8) -> int:
    """Nearest multiple of ``divisor`` (at least one), never below 90% of v: the papers' channel rounding."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _check(width_mult, num_classes, input_size, in_channels):
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
    for name, v in (("num_classes", num_classes), ("input_size", input_size), ("in_channels", in_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def _conv_bn_act(inp: int, oup: int, k: int, stride: int, act: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, k, stride, k // 2, bias=False), nn.BatchNorm2d(oup), act())


def _init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, DepthwiseSeparableConv2d):
            nn.init.kaiming_normal_(m.dw_weight, mode="fan_out")
            nn.init.kaiming_normal_(m.pw_weight, mode="fan_out")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


class _Net(nn.Module):
    def __init__(self, features: nn.Sequential, channels: int, num_classes: int, dropout: float, input_size: int):
        super().__init__()
        self.input_size = input_size  # the resolution the model was designed for (any size >= stride works)
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def _v1(blocks, stem: int, stem_stride: int, width_mult, num_classes, input_size, in_channels, fused, dropout):
    _check(width_mult, num_classes, input_size, in_channels)
    c = _divisible(stem * width_mult)
    layers = [_conv_bn_act(in_channels, c, 3, stem_stride, nn.ReLU)]
    for out, s in blocks:
        o = _divisible(out * width_mult)
        layers.append(DepthwiseSeparableConv2d(c, o, 3, s, 1, bias=False, bn=True, pw_bn=True, mid_activation="relu",
                                               activation="relu", fused=fused))
        c = o
    return _init(_Net(nn.Sequential(*layers), c, num_classes, dropout, input_size))


def mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000, input_size: int = 224, in_channels: int = 3,
                 fused="auto", dropout: float = 0.0) -> nn.Module:
    """MobileNetV1: 3x3 conv stride 2, then 13 depthwise-separable blocks (each one DepthwiseSeparableConv2d)."""
    return _v1(V1_BLOCKS, 32, 2, width_mult, num_classes, input_size, in_channels, fused, dropout)


def mobilenet_v1_digits(num_classes: int = 10, width_mult: float = 1.0, fused="auto") -> nn.Module:
    """A 4-block V1 for 1x8x8 images: stem 16 stride 1, blocks 32, 64 s2, 64, 128."""
    return _v1(((32, 1), (64, 2), (64, 1), (128, 1)), 16, 1, width_mult, num_classes, 8, 1, fused, 0.0)


class InvertedResidual(nn.Module):
    """1x1 expand (BN, ReLU6; absent when expand_ratio == 1) -> DepthwiseSeparableConv2d(dw 3x3, BN, ReLU6,
    project 1x1, BN) [+ x when stride 1 and inp == oup]."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, fused="auto"):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_residual = stride == 1 and inp == oup
        self.expand = _conv_bn_act(inp, hidden, 1, 1, nn.ReLU6) if expand_ratio != 1 else nn.Identity()
        self.dwpw = DepthwiseSeparableConv2d(hidden, oup, 3, stride, 1, bias=False, bn=True, pw_bn=True,
                                             mid_activation="relu6", activation=None, fused=fused)

    def forward(self, x):
        y = self.dwpw(self.expand(x))
        return x + y if self.use_residual else y


def _v2(settings, stem: int, stem_stride: int, last: int, width_mult, num_classes, input_size, in_channels, fused,
        dropout):
    _check(width_mult, num_classes, input_size, in_channels)
    c = _divisible(stem * width_mult)
    last = _divisible(last * max(1.0, width_mult))
    layers: list[nn.Module] = [_conv_bn_act(in_channels, c, 3, stem_stride, nn.ReLU6)]
    for t, ch, n, s in settings:
        o = _divisible(ch * width_mult)
        for i in range(n):
            layers.append(InvertedResidual(c, o, s if i == 0 else 1, t, fused))
            c = o
    layers.append(_conv_bn_act(c, last, 1, 1, nn.ReLU6))
    return _init(_Net(nn.Sequential(*layers), last, num_classes, dropout, input_size))


def mobilenet_v2(width_mult: float = 1.0, num_classes: int = 1000, input_size: int = 224, in_channels: int = 3,
                 fused="auto", dropout: float = 0.2) -> nn.Module:
    """MobileNetV2: stem 3x3 conv stride 2, 17 inverted residual blocks, 1x1 conv to 1280, pool, classifier."""
    return _v2(V2_SETTINGS, 32, 2, 1280, width_mult, num_classes, input_size, in_channels, fused, dropout)


def mobilenet_v2_digits(num_classes: int = 10, width_mult: float = 1.0, fused="auto") -> nn.Module:
    """A 5-block V2 for 1x8x8 images: stem 16 stride 1, stages (t, c, n, s) (1, 8, 1, 1), (4, 16, 2, 2),
    (4, 24, 2, 1), 1x1 conv to 64."""
    return _v2(((1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 2, 1)), 16, 1, 64, width_mult, num_classes, 8, 1, fused, 0.0)


def to_torch(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every DepthwiseSeparableConv2d replaced by its plain torch modules
    (``to_modules()``: dw conv, BN, act, pw conv, BN, act): the reference the fused model is compared with."""
    model = copy.deepcopy(model)
    if isinstance(model, DepthwiseSeparableConv2d):
        return model.to_modules()
    for name, m in list(model.named_modules()):
        if isinstance(m, DepthwiseSeparableConv2d):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, m.to_modules())
    return model
