"""Straight-through estimators and latent-weight clipping for training binary layers.

- :func:`sign_weight` / :func:`sign_input`: ``sign(v) = +1 for v >= 0 else -1`` (NaN -> -1, as the packed
  bits) in the forward pass; in the backward pass the gradient goes straight through where ``|v| <= 1`` and
  is exactly 0 elsewhere. For inputs this is the hardtanh STE of BinaryNet (d hardtanh/dx, with the edges
  |x| = 1 included); for the latent weights it stops pushing weights that are already saturated.
- Latent weights live in [-1, 1] (beyond that their gradient is 0 and they could never flip sign again). Every
  parameter marked with :func:`mark_latent` is clamped back into [-1, 1] right after each ``step()`` of any
  ``torch.optim.Optimizer`` (a global optimizer step post-hook, installed once when the first latent weight is
  marked),
  so training works with any optimizer without extra code. Updates made by hand (``w -= lr * w.grad``) are not
  seen by the hook: call :func:`clip_latent_` (or the modules' ``clip_()``) after them.
"""
from __future__ import annotations

import torch

_LATENT_MARK = "_sparsecomp_binary_latent"


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return (x >= 0).to(x.dtype) * 2 - 1  # exact +1/-1; NaN compares false -> -1

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        # where (not multiply): an Inf/NaN upstream gradient must still give an exact 0 outside the window
        return torch.where(x.abs() <= 1, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


def sign_weight(w: torch.Tensor) -> torch.Tensor:
    """+-1 signs of latent weights; gradient passed where |w| <= 1."""
    return _SignSTE.apply(w)


def sign_input(x: torch.Tensor) -> torch.Tensor:
    """+-1 signs of activations; hardtanh straight-through gradient (passed where |x| <= 1)."""
    return _SignSTE.apply(x)


def mark_latent(param: torch.Tensor) -> None:
    """Registers ``param`` as a latent binary weight: optimizers clamp it into [-1, 1] after each step."""
    _install_clip_hook()
    setattr(param, _LATENT_MARK, True)


def is_latent(param: torch.Tensor) -> bool:
    return bool(getattr(param, _LATENT_MARK, False))


@torch.no_grad()
def clip_latent_(param: torch.Tensor) -> torch.Tensor:
    """Clamps a latent weight into [-1, 1] in place (no host sync: cheap right after an optimizer step)."""
    return param.clamp_(-1.0, 1.0)


def _clip_after_step(optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            if is_latent(p):
                clip_latent_(p)


_hook_handle = None


def _install_clip_hook() -> None:
    # Installed on first use rather than at import: importing sparsecomp should not touch torch.optim.
    global _hook_handle
    if _hook_handle is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _hook_handle = register_optimizer_step_post_hook(_clip_after_step)
