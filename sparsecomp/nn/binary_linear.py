"""BinaryLinear: a linear layer with 1-bit (+-alpha) weights, and optionally 1-bit inputs (XNOR-Net)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ._binary_ste import sign_input
from ._binary_weight import BinaryWeightMixin, check_activation


class BinaryLinear(BinaryWeightMixin, nn.Module):
    """``y = act(alpha * (s(x) @ sign(W).T) + bias)`` with ``sign(v) = +1 for v >= 0 else -1``,
    ``alpha[o] = mean |W[o]|``, ``s = sign`` (``binarize_input=True``, XNOR-Net) or the identity
    (``binarize_input=False``, BinaryConnect) and ``act`` = identity or ReLU (``activation='relu'``).

    Training mode runs this formula with float ops on the latent weight ``weight``: straight-through gradients
    (passed where |w| <= 1, and for binarized inputs where |x| <= 1), alpha treated as a constant; the latent
    weight is clamped to [-1, 1] after every torch.optim step (see ``clip_``). Eval mode runs the packed bits on
    the popcount kernel (``ops.binary_linear``, no autograd). Inputs may have any leading dims, like nn.Linear.

    ``state_dict`` holds ``weight_bits``, ``alpha`` (+ ``scale`` after a BatchNorm fold) and ``bias``, plus the
    latent ``weight`` only with ``keep_latent=True``. A module loaded without latent weights keeps frozen signs:
    eval as usual, training mode still runs (gradients reach the input and bias); ``init_latent_()`` makes the
    signs trainable again.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, binarize_input: bool = True,
                 activation: str | None = None, keep_latent: bool = False, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features} and {out_features}")
        self._init_binary_weight((self.out_features, self.in_features), bias, binarize_input, activation,
                                 keep_latent, device=device, dtype=dtype)
        self.reset_parameters()

    @classmethod
    def from_float(cls, linear: nn.Linear, bn: nn.BatchNorm1d | None = None, activation: str | None = None,
                   binarize_input: bool = True, keep_latent: bool = False) -> "BinaryLinear":
        """Binarizes ``linear`` (its weight becomes the latent weight), folding an optional BatchNorm1d that
        follows it (its running statistics, i.e. its eval behaviour) and an optional fused ``'relu'``."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        if bn is not None and not isinstance(bn, nn.BatchNorm1d):
            raise TypeError(f"bn must be an nn.BatchNorm1d or None, got {type(bn).__name__}")
        w = linear.weight.detach()
        if not w.is_floating_point():
            raise TypeError(f"linear.weight must be floating-point, got {w.dtype}")
        check_activation(activation)
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None or bn is not None,
                     binarize_input=binarize_input, activation=activation, keep_latent=keep_latent,
                     device=w.device, dtype=w.dtype)
        with torch.no_grad():
            module.weight.copy_(w)
            if linear.bias is not None:
                module.bias.copy_(linear.bias.detach())
            elif module.bias is not None:  # only the BatchNorm brings a bias
                module.bias.zero_()
        module._packed_key = None
        if bn is not None:
            module._fold_batch_norm(bn)
        module._sync_packed()
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"BinaryLinear: input must end with in_features={self.in_features}, got shape "
                             f"{tuple(x.shape)}")
        if self.training:
            signs, alpha = self._signs_and_alpha_for_training()
            xs = sign_input(x) if self.binarize_input else x
            y = F.linear(xs, signs) * alpha
            if self.bias is not None:
                y = y + self.bias
            return F.relu(y) if self.activation == "relu" else y
        bits, alpha = self._packed_for_eval()
        lead = x.shape[:-1]
        y = ops.binary_linear(x.reshape(-1, self.in_features).contiguous(), bits, alpha, self.bias, self.in_features,
                              self.binarize_input, self.activation)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                + self._binary_repr())
