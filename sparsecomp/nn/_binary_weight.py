"""Storage shared by the binary modules: a latent float weight for training, packed sign bits + alpha for eval.

Members of a module using :class:`BinaryWeightMixin` (O = output channels):
- ``weight`` (Parameter, or None): the latent float weight, trained through the straight-through estimator
  and kept in [-1, 1] (see _binary_ste). None once the module was loaded from a state_dict saved without it.
- ``weight_bits`` (int64 buffer): the signs in the packed layout of formats.packed_bits.
- ``alpha`` (float buffer [O]): the per-channel scale the kernels multiply with; ``scale * mean|W[o]|``.
- ``scale`` (float buffer [O], or None): a gain folded in by ``from_float(..., bn=...)`` (BatchNorm's
  ``gamma / sqrt(var + eps)``, negative where gamma is). Kept apart from the latent weight so that training a
  folded module goes on computing exactly the function the eval path computes.
- ``bias`` (Parameter [O], or None).

The packed form is derived from the latent weight: it is re-packed when the module switches to eval, when a
state_dict is taken, and (cheaply checked through the weight's version counter) on every eval forward, so an
in-place edit of ``weight`` is never served stale. Under torch.compile the version check is skipped: the
compiled graph uses the bits packed at the last ``eval()`` / eager call.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..formats.packed_bits import binary_alpha, pack_signs, packed_shape, unpack_signs, validate_packed
from ._binary_ste import clip_latent_, mark_latent, sign_weight

ACTIVATIONS = ("none", "relu")


def check_activation(activation) -> str:
    act = "none" if activation is None else activation
    if act not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'none' or 'relu', got {activation!r}")
    return act


class BinaryWeightMixin:
    """Latent weight, packed bits, alpha and their synchronisation, state_dict and BatchNorm folding."""

    def _init_binary_weight(self, weight_shape, bias: bool, binarize_input: bool, activation, keep_latent: bool,
                            device=None, dtype=None) -> None:
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        self._weight_shape = tuple(int(s) for s in weight_shape)
        self.binarize_input = bool(binarize_input)
        self.activation = check_activation(activation)
        self.keep_latent = bool(keep_latent)
        out = self._weight_shape[0]
        self.weight = nn.Parameter(torch.empty(self._weight_shape, dtype=dtype, device=device))
        mark_latent(self.weight)
        self.register_buffer("weight_bits", torch.zeros(packed_shape(self._weight_shape), dtype=torch.int64,
                                                        device=device))
        self.register_buffer("alpha", torch.zeros(out, dtype=dtype, device=device))
        self.register_buffer("scale", None)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self._packed_key = None

    def reset_parameters(self) -> None:
        """The initialisation of nn.Linear / nn.Conv2d (their weights lie well inside [-1, 1])."""
        if self.weight is None:  # a module loaded without latent weights gets fresh ones
            self.weight = nn.Parameter(torch.empty(self._weight_shape, dtype=self.alpha.dtype,
                                                   device=self.alpha.device))
            mark_latent(self.weight)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = math.prod(self._weight_shape[1:])
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        self.scale = None
        self._packed_key = None
        self._sync_packed()

    # ------------------------------------------------------------------ latent <-> packed

    def _current_key(self):
        w, s = self.weight, self.scale
        if w is None:
            return None
        try:
            key = (id(w), w._version, w.data_ptr(), w.dtype)
            return key if s is None else key + (id(s), s._version, s.data_ptr())
        except RuntimeError:  # inference tensors have no version counter: never trust a cached packing
            return object()

    def _latent_alpha(self) -> torch.Tensor:
        alpha = binary_alpha(self.weight)
        return alpha if self.scale is None else alpha * self.scale

    @torch.no_grad()
    def _sync_packed(self) -> None:
        """Re-packs ``weight_bits`` and ``alpha`` from the latent weight if it changed since the last packing."""
        if self.weight is None:
            return
        key = self._current_key()
        if key is not None and key == self._packed_key:
            return
        self.weight_bits.copy_(pack_signs(self.weight))
        self.alpha.copy_(self._latent_alpha())
        self._packed_key = key

    def _packed_for_eval(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.compiler.is_compiling():
            self._sync_packed()
        return self.weight_bits, self.alpha

    def _signs_and_alpha_for_training(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(+-1 weight with the STE, alpha) for the float training formula; alpha carries no gradient."""
        if self.weight is None:  # loaded without latent weights: the signs are frozen
            return unpack_signs(self.weight_bits, self._weight_shape, self.alpha.dtype), self.alpha
        return sign_weight(self.weight), self._latent_alpha()

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode:
            self._sync_packed()
        return self

    def clip_(self):
        """Clamps the latent weight into [-1, 1]. Optimizers from torch.optim do this after every step by
        themselves (a global step hook); call it after updating ``weight`` by hand."""
        if self.weight is not None:
            clip_latent_(self.weight)
        return self

    @torch.no_grad()
    def init_latent_(self):
        """Re-creates a trainable latent weight for a module loaded without one (no-op if it has one).

        The latent weight starts at exactly +-1 (the clip boundary, where the gradient still passes) and the
        current alpha moves into ``scale``, so the function is unchanged: ``scale * mean|+-1| == alpha``.
        Build the optimizer after this call: it adds a new Parameter.
        """
        if self.weight is not None:
            return self
        self.weight = nn.Parameter(unpack_signs(self.weight_bits, self._weight_shape, self.alpha.dtype))
        mark_latent(self.weight)
        self.scale = self.alpha.clone()
        self._packed_key = None
        self._sync_packed()
        return self

    @torch.no_grad()
    def _fold_batch_norm(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        """Folds BatchNorm's eval-mode transform (running statistics) into ``scale``/``alpha`` and ``bias``."""
        out = self._weight_shape[0]
        if bn.num_features != out:
            raise ValueError(f"bn.num_features={bn.num_features} does not match the layer's {out} outputs")
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("bn has no running statistics (track_running_stats=False): nothing to fold")
        gain = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            gain = gain * bn.weight.double()
        shift = -bn.running_mean.double() * gain
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        self.bias.copy_(self.bias.double() * gain + shift)
        scale = gain if self.scale is None else self.scale.double() * gain
        self.scale = scale.to(device=self.alpha.device, dtype=self.alpha.dtype)
        self._packed_key = None
        self._sync_packed()

    # ------------------------------------------------------------------ memory report

    def weight_memory_bytes(self) -> int:
        """Bytes of the weight as stored for inference: packed bits + alpha (+ scale if a BN was folded)."""
        tensors = [self.weight_bits, self.alpha] + ([self.scale] if self.scale is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def float_weight_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes the same weight takes as a dense float tensor (fp32 by default)."""
        return math.prod(self._weight_shape) * dtype.itemsize

    def _binary_repr(self) -> str:
        ratio = self.float_weight_bytes() / max(self.weight_memory_bytes(), 1)
        return (f"binarize_input={self.binarize_input}, activation={self.activation}, "
                f"latent={'yes' if self.weight is not None else 'no (frozen signs)'}, keep_latent={self.keep_latent}, "
                f"weight_bytes={self.weight_memory_bytes()} ({ratio:.1f}x smaller than fp32)")

    # ------------------------------------------------------------------ state_dict

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self._sync_packed()
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not self.keep_latent:
            destination.pop(prefix + "weight", None)

    def _split_checkpoint(self, state_dict, prefix: str):
        """(this module's entries, missing names, unexpected full keys) of ``state_dict``."""
        allowed = {"weight", "weight_bits", "alpha", "scale"} | ({"bias"} if self.bias is not None else set())
        local, unexpected = {}, []
        for key, value in state_dict.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if name in allowed:
                local[name] = value
            else:
                unexpected.append(key)
        missing = sorted((allowed - {"weight", "scale"}) - set(local))
        return local, missing, unexpected

    def _check_checkpoint(self, local: dict) -> None:
        """Raises TypeError/ValueError, naming the entry, unless this module's entries are consistent."""
        for name, value in local.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
        validate_packed(local["weight_bits"], self._weight_shape)
        out = self._weight_shape[0]
        for name in ("alpha", "scale", "bias"):
            if name in local:
                t = local[name]
                if not t.is_floating_point():
                    raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
                if tuple(t.shape) != (out,):
                    raise ValueError(f"{name} must have shape {(out,)}, got {tuple(t.shape)}")
        if "weight" in local:
            w = local["weight"]
            if not w.is_floating_point():
                raise TypeError(f"weight (latent) must be a floating-point tensor, got {w.dtype}")
            if tuple(w.shape) != self._weight_shape:
                raise ValueError(f"weight (latent) must have shape {self._weight_shape}, got {tuple(w.shape)}")
            bits = local["weight_bits"]
            if not torch.equal(pack_signs(w).to(bits.device), bits):
                raise ValueError("weight_bits do not match the signs of the latent weight")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # All or nothing, checked before anything is touched: a rejected checkpoint leaves the module as it was,
        # and bits, alpha, bias and latent weight never come from different checkpoints. torch passes
        # strict=True here whatever the caller asked, so missing/unexpected keys skip the whole module; with
        # load_state_dict(strict=False) they are then only reported in its result.
        local, missing, unexpected = self._split_checkpoint(state_dict, prefix)
        if missing or unexpected:
            missing_keys.extend(prefix + name for name in missing)
            unexpected_keys.extend(unexpected)
            return
        try:
            self._check_checkpoint(local)
        except (TypeError, ValueError) as err:
            error_msgs.append(f"{prefix[:-1] if prefix else type(self).__name__}: {err}")
            return
        before = (self.weight, self.scale)
        # The optional members follow the checkpoint: packed bits without a latent weight make the module's
        # own latent weight stale, so it is dropped (frozen signs); a checkpoint with one re-creates it.
        if "weight" in local and self.weight is None:
            self.weight = nn.Parameter(torch.empty(self._weight_shape, dtype=self.alpha.dtype,
                                                   device=self.alpha.device))
        elif "weight" not in local:
            self.weight = None
        if "scale" in local and self.scale is None:
            self.scale = torch.empty_like(self.alpha)
        elif "scale" not in local:
            self.scale = None
        n_errors = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if len(error_msgs) > n_errors:
            self.weight, self.scale = before
            return
        if self.weight is not None:
            mark_latent(self.weight)  # a load with assign=True replaces the Parameter
        # the loaded bits and alpha are authoritative (the bits were checked against the latent signs)
        self._packed_key = self._current_key()
