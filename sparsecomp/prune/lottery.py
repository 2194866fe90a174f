"""Lottery tickets (Frankle & Carbin 2019; criteria and re-inits after Zhou et al. 2019).

Keep the initial weights (or those of iteration k: "late rewinding"), train, prune with a mask criterion,
reset the survivors to their kept values, retrain. Mask criteria (higher score = kept):
- ``large_final``: |w_final|;
- ``magnitude_increase``: |w_final| - |w_init|;
- ``large_final_same_sign``: |w_final| among weights whose sign did not change; sign-flipped weights rank
  below all of them. Applied to the initial weights without training this gives a "supermask".
Re-inits of the survivors: ``rewind`` (their kept values), ``constant`` (+alpha / -alpha with the sign of the
kept value, alpha = std of the layer's kept weights), ``random`` (values drawn without replacement from the
layer's kept weights at random: same distribution, no relation to the survivor: the control experiment).
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .history import History
from .masks import apply_mask, get_mask, masked_names
from .targets import prunable_layers
from .unstructured import by_scores, check_amount, check_scope, sparsity

CRITERIA = ("large_final", "magnitude_increase", "large_final_same_sign")
REINITS = ("rewind", "constant", "random")


def criterion_scores(final: torch.Tensor, init: torch.Tensor, criterion: str) -> torch.Tensor:
    """Score of each weight under a mask criterion (float64; the highest are kept)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if final.shape != init.shape:
        raise ValueError(f"final and init weights differ in shape: {tuple(final.shape)} vs {tuple(init.shape)}")
    f, i = final.detach().double().cpu(), init.detach().double().cpu()
    if criterion == "large_final":
        return f.abs()
    if criterion == "magnitude_increase":
        return f.abs() - i.abs()
    same = torch.sign(f) == torch.sign(i)
    return torch.where(same, f.abs(), torch.full_like(f, -1.0))  # every |w| >= 0 outranks a sign flip


class Lottery:
    """Keeps the rewind point of ``model`` (all parameters and buffers, taken now) and prunes/rewinds it.

    For late rewinding create it (or call :meth:`snapshot`) after k training iterations.
    """

    def __init__(self, model: nn.Module, skip=(), types=None):
        self.model, self.skip, self.types = model, skip, types
        self.layers = prunable_layers(model, skip=skip, types=types)
        if not self.layers:
            raise ValueError("Lottery: the model has no prunable layer (check skip and types)")
        self.snapshot()

    def snapshot(self) -> None:
        """Makes the current state the rewind point."""
        self.rewind_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _kept(self, name: str) -> torch.Tensor:
        return self.rewind_state[f"{name}.weight" if name else "weight"]

    def prune(self, amount: float, criterion: str = "large_final", scope: str = "global") -> None:
        """Masks weights so that a fraction ``amount`` is pruned, ranked by ``criterion`` between the current
        (final) weights and the rewind point. Earlier masks stay."""
        amount, scope = check_amount(amount), check_scope(scope)
        scores = {n: criterion_scores(m.weight, self._kept(n), criterion) for n, m in self.layers.items()}
        by_scores(self.model, scores, amount, scope, self.skip, self.types)

    def rewind(self, reinit: str = "rewind", generator: torch.Generator | None = None) -> None:
        """Resets every parameter and buffer to the rewind point; survivors of the prunable layers per
        ``reinit``; pruned weights stay zero."""
        if reinit not in REINITS:
            raise ValueError(f"reinit must be one of {REINITS}, got {reinit!r}")
        state = {k: v.clone() for k, v in self.rewind_state.items()}
        for name in self.layers:
            key = f"{name}.weight" if name else "weight"
            w0 = state[key]
            if reinit == "constant":
                alpha = w0.double().std().item() if w0.numel() > 1 else abs(w0.double().item())
                state[key] = torch.where(w0 >= 0, alpha, -alpha).to(w0.dtype)
            elif reinit == "random":
                perm = torch.randperm(w0.numel(), generator=generator).to(w0.device)
                state[key] = w0.flatten()[perm].reshape(w0.shape)
        self.model.load_state_dict(state)
        for module in self.model.modules():  # load_state_dict wrote over the zeros: re-zero now
            for pname in masked_names(module):
                apply_mask(module, get_mask(module, pname), pname)


def lottery(model: nn.Module, train_fn: Callable[[nn.Module], object], rounds: int = 3, rate: float = 0.2,
            criterion: str = "large_final", reinit: str = "rewind", eval_fn: Callable[[nn.Module], float] | None = None,
            scope: str = "global", skip=(), types=None, ticket: Lottery | None = None,
            generator: torch.Generator | None = None, progress: bool = True) -> History:
    """Iterative magnitude pruning with rewinding: ``rounds`` times train -> prune a fraction ``rate`` of the
    remaining weights -> rewind; then the final ticket is trained once more.

    The rewind point is ``model`` as passed (its initialization), or ``ticket``'s (a :class:`Lottery`
    snapshotted at iteration k). Returns a :class:`History` with one row per training run (round 0: dense).
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an int >= 0, got {rounds!r}")
    rate, scope = check_amount(rate, "rate"), check_scope(scope)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if reinit not in REINITS:
        raise ValueError(f"reinit must be one of {REINITS}, got {reinit!r}")
    if ticket is None:
        ticket = Lottery(model, skip=skip, types=types)
    elif ticket.model is not model:
        raise ValueError("ticket must be a Lottery of the same model")
    history = History()
    for k in tqdm(range(rounds + 1), desc="lottery", unit="round", disable=not progress):
        t0 = time.perf_counter()
        train_fn(model)
        metric = float(eval_fn(model)) if eval_fn is not None else None
        history.append({"round": k, "sparsity": sparsity(model, skip=ticket.skip, types=ticket.types),
                        "metric": metric, "seconds": time.perf_counter() - t0})
        if k < rounds:
            ticket.prune(1.0 - (1.0 - rate) ** (k + 1), criterion, scope)
            ticket.rewind(reinit, generator=generator)
    return history
