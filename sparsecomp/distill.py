"""Knowledge distillation: the soft-target loss (Hinton et al., 2015), ensemble teachers, FitNets hint losses
(Romero et al., 2015) and ``Distiller``, a small training loop that ties them together.

Typical use::

    teacher.eval()
    opt = torch.optim.Adam(student.parameters(), 1e-3)
    history = Distiller(student, teacher, opt, T=4.0, alpha=0.9).fit(lambda: train.batches(64), epochs=5)
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["kd_loss", "EnsembleTeacher", "FeatureHints", "Distiller"]


def _check_temperature(T) -> float:
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T) or T <= 0:
        raise ValueError(f"T must be a positive finite number, got {T!r}")
    return float(T)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def _kd_terms(student_logits, teacher_logits, target, T, alpha) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(alpha * T^2 * KL, (1 - alpha) * CE or None): the two weighted terms of :func:`kd_loss`."""
    T, alpha = _check_temperature(T), _check_alpha(alpha)
    for name, z in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or not z.is_floating_point():
            raise ValueError(f"{name} must be a floating-point [batch, classes] tensor, got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}"
                             f"{' ' + str(z.dtype) if isinstance(z, torch.Tensor) else ''}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    if target is None and alpha == 0.0:
        raise ValueError("alpha=0 weights only the hard-label term, which needs a target")
    if target is not None:
        if (not isinstance(target, torch.Tensor) or target.dtype != torch.int64
                or target.shape != student_logits.shape[:1]):
            raise ValueError(f"target must be an int64 tensor of {student_logits.shape[0]} class indices, got "
                             f"{tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__}"
                             f"{' ' + str(target.dtype) if isinstance(target, torch.Tensor) else ''}")
    # Half-precision softmax/log loses too much at high T: do the loss in at least float32.
    s, t = student_logits, teacher_logits.to(student_logits.dtype)
    if s.dtype in (torch.float16, torch.bfloat16):
        s, t = s.float(), t.float()
    soft = s.new_zeros(())
    if alpha > 0.0:
        # KL(p_t || p_s) summed over classes and averaged over the batch ("batchmean": the true KL per sample).
        kl = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1), reduction="batchmean",
                      log_target=True)
        soft = alpha * T * T * kl
    hard = None
    if target is not None and alpha < 1.0:
        hard = (1.0 - alpha) * F.cross_entropy(s, target)
    return soft, hard


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None = None,
            T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton et al.'s distillation loss::

        alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))   (summed over classes, batch mean)
      + (1 - alpha) * cross_entropy(student, target)                     (only when ``target`` is given)

    Without ``target`` the hard term is dropped, not renormalized: the soft term keeps the same weight
    whether or not labels are available. ``teacher_logits`` is not detached (compute it under ``no_grad``
    for a fixed teacher; leave it attached for online/mutual distillation).

    Why ``T^2``: with ``p = softmax(z / T)`` the gradient of ``KL(p_t || p_s)`` w.r.t. the student logits is
    ``(p_s - p_t) / T``. For large T, ``p ~ (1 + (z - mean z) / T) / K`` (K classes), so ``p_s - p_t ~
    (s - t) / (K T)`` and the gradient shrinks as ``1 / T^2``. Multiplying by ``T^2`` keeps the soft term's
    gradient magnitude independent of T (it tends to ``(s - t) / K`` per sample when logits are zero-mean),
    so ``alpha`` keeps its meaning while T is tuned. Per sample the exact gradient is ``alpha * T *
    (p_s - p_t) / batch``.
    """
    soft, hard = _kd_terms(student_logits, teacher_logits, target, T, alpha)
    loss = soft if hard is None else soft + hard
    return loss.to(student_logits.dtype)


class EnsembleTeacher(nn.Module):
    """Several teachers as one: returns logits whose softened distribution is the members' average.

    ``combine="probs"`` (default) averages the members' softened probabilities ``softmax(z_k / T)`` and returns
    ``T * log(mean_k softmax(z_k / T))``, so that ``softmax(output / T)`` is exactly that average. Why this
    default: the averaged distribution is the ensemble's predictive distribution (a mixture); it is unaffected
    by members whose logits have different scales and keeps each member's uncertainty. Because it is built at
    temperature ``T``, pass the same T to :func:`kd_loss` (``Distiller`` checks this).
    ``combine="logits"`` averages raw logits (a normalized product of the members' distributions): sharper,
    independent of T, but dominated by the member with the largest logit scale.
    ``weights`` (default equal) must be positive; they are normalized to sum to 1.
    """

    def __init__(self, models: Sequence[nn.Module], combine: str = "probs", T: float = 4.0,
                 weights: Sequence[float] | None = None):
        super().__init__()
        models = list(models)
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise ValueError("models must be a non-empty sequence of nn.Module")
        if combine not in ("probs", "logits"):
            raise ValueError(f"combine must be 'probs' or 'logits', got {combine!r}")
        self.members = nn.ModuleList(models)
        self.combine = combine
        self.T = _check_temperature(T)
        if weights is None:
            weights = [1.0] * len(models)
        weights = [float(w) for w in weights]
        if len(weights) != len(models) or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"weights must be {len(models)} positive finite numbers, got {weights}")
        total = sum(weights)
        self.register_buffer("weights", torch.tensor([w / total for w in weights], dtype=torch.float64),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.members]
        for i, z in enumerate(outs):
            if not isinstance(z, torch.Tensor) or z.shape != outs[0].shape or z.dim() != 2:
                raise ValueError(f"ensemble member {i} returned {getattr(z, 'shape', type(z).__name__)}; all "
                                 f"members must return [batch, classes] logits of one shape")
        z = torch.stack(outs)  # [members, batch, classes]
        w = self.weights.to(device=z.device, dtype=z.dtype).view(-1, 1, 1)
        if self.combine == "logits":
            return (w * z).sum(0)
        # log of the weighted mean of probabilities, in log space for stability: logsumexp(log w + log p).
        log_p = F.log_softmax(z / self.T, dim=2) + w.log()
        return self.T * torch.logsumexp(log_p, dim=0)

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, T={self.T}, members={len(self.members)}"


def _module_by_name(model: nn.Module, name: str, which: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise ValueError(f"{which} has no module named {name!r} (names are those of {which}.named_modules())")
    return modules[name]


class FeatureHints(nn.Module):
    """FitNets-style hint loss: intermediate student features, mapped by a learned projection, regress onto
    the teacher's features at chosen layers.

    ``pairs`` maps student module names to teacher module names (as in ``named_modules()``); forward hooks
    capture those modules' outputs on every forward pass. Projections are built from one forward pass on
    ``example_input`` (both models in eval mode, no grad, modes restored after): a 1x1 ``Conv2d`` for
    [N, C, H, W] features (spatial sizes must match), a ``Linear`` for [N, C] features. :meth:`loss` is
    ``sum_k weight_k * mean((proj_k(student_k) - teacher_k)^2)`` on the features of the last forward passes;
    the teacher features are detached. The projections are parameters of this module: give them to the
    optimizer (``Distiller`` averages their gradients across ranks under torch.distributed, since they live
    outside a DistributedDataParallel student). Call :meth:`remove` (or use ``with``) to detach the hooks.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: Mapping[str, str] | Sequence[tuple[str, str]],
                 example_input: torch.Tensor, weights: Sequence[float] | None = None):
        super().__init__()
        pairs = list(pairs.items()) if isinstance(pairs, Mapping) else [tuple(p) for p in pairs]
        if not pairs or not all(len(p) == 2 and all(isinstance(n, str) for n in p) for p in pairs):
            raise ValueError("pairs must be a non-empty mapping (or sequence of pairs) of student -> teacher "
                             "module names")
        self.pairs = pairs
        self.hint_weights = [1.0] * len(pairs) if weights is None else [float(w) for w in weights]
        if len(self.hint_weights) != len(pairs) or not all(math.isfinite(w) and w >= 0 for w in
                                                           self.hint_weights):
            raise ValueError(f"weights must be {len(pairs)} non-negative finite numbers, got {weights}")
        s_modules = [_module_by_name(student, s, "student") for s, _ in pairs]
        t_modules = [_module_by_name(teacher, t, "teacher") for _, t in pairs]
        self._student_feats: dict[int, torch.Tensor] = {}
        self._teacher_feats: dict[int, torch.Tensor] = {}
        self._handles = []
        for i, (sm, tm) in enumerate(zip(s_modules, t_modules)):
            self._handles.append(sm.register_forward_hook(self._capture(self._student_feats, i, pairs[i][0])))
            self._handles.append(tm.register_forward_hook(self._capture(self._teacher_feats, i, pairs[i][1])))
        try:
            self.projections = nn.ModuleList(self._build_projections(student, teacher, example_input))
        except Exception:
            self.remove()
            raise

    @staticmethod
    def _capture(store: dict, index: int, name: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"hint module {name!r} must return a tensor, got {type(output).__name__}")
            store[index] = output
        return hook

    def _build_projections(self, student, teacher, example_input) -> list[nn.Module]:
        modes = [(m, m.training) for m in (student, teacher)]
        try:
            student.eval()
            teacher.eval()
            with torch.no_grad():
                student(example_input)
                teacher(example_input)
        finally:
            for m, mode in modes:
                m.train(mode)
        projections = []
        for i, (s_name, t_name) in enumerate(self.pairs):
            if i not in self._student_feats or i not in self._teacher_feats:
                raise ValueError(f"hint pair ({s_name!r}, {t_name!r}) was not run by a forward pass on "
                                 f"example_input")
            s, t = self._student_feats[i], self._teacher_feats[i]
            device, dtype = s.device, s.dtype
            if s.dim() == 4 and t.dim() == 4:
                if s.shape[2:] != t.shape[2:]:
                    raise ValueError(f"hint pair ({s_name!r}, {t_name!r}): spatial sizes differ, student "
                                     f"{tuple(s.shape)} vs teacher {tuple(t.shape)}")
                projections.append(nn.Conv2d(s.shape[1], t.shape[1], 1, device=device, dtype=dtype))
            elif s.dim() == 2 and t.dim() == 2:
                projections.append(nn.Linear(s.shape[1], t.shape[1], device=device, dtype=dtype))
            else:
                raise ValueError(f"hint pair ({s_name!r}, {t_name!r}): features must both be [N, C] or both "
                                 f"[N, C, H, W], got {tuple(s.shape)} and {tuple(t.shape)}")
        self._student_feats.clear()
        self._teacher_feats.clear()
        return projections

    def loss(self) -> torch.Tensor:
        """Weighted sum of the per-pair mean squared errors; consumes the captured features."""
        missing = [self.pairs[i] for i in range(len(self.pairs))
                   if i not in self._student_feats or i not in self._teacher_feats]
        if missing:
            raise RuntimeError(f"no captured features for hint pairs {missing}: run the student and the teacher "
                               f"on the same batch before calling loss()")
        total = None
        for i, proj in enumerate(self.projections):
            s, t = self._student_feats[i], self._teacher_feats[i].detach()
            if s.shape[0] != t.shape[0]:
                raise RuntimeError(f"hint pair {self.pairs[i]}: student batch {s.shape[0]} != teacher batch "
                                   f"{t.shape[0]} (run both on the same batch)")
            term = self.hint_weights[i] * F.mse_loss(proj(s), t.to(s.dtype))
            total = term if total is None else total + term
        self._student_feats.clear()
        self._teacher_feats.clear()
        return total

    def remove(self) -> None:
        """Detach the forward hooks from the student and the teacher."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "FeatureHints":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _unpack(batch):
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 2 and isinstance(batch[0], torch.Tensor):
        return batch[0], (batch[1] if len(batch) == 2 else None)
    raise ValueError(f"batches must be a tensor x, (x,) or (x, y), got {type(batch).__name__}")


class Distiller:
    """Trains ``student`` to match ``teacher`` (a module, or a list of modules averaged by
    :class:`EnsembleTeacher`) with :func:`kd_loss` and, optionally, :class:`FeatureHints`.

    The teacher runs in eval mode under ``torch.no_grad`` (its mode is restored after :meth:`fit`); the
    student in train mode. ``optimizer`` must hold the student's parameters (and ``hints.parameters()`` when
    hints are used). The student may be wrapped in ``DistributedDataParallel``; the hint projections (outside
    the DDP module) are then broadcast from rank 0 at construction and their gradients averaged across ranks
    at every step, so all ranks stay identical; each rank should iterate its own shard of the data, with the
    same number of batches per rank (DDP's collectives must match). ``progress`` shows a tqdm bar (default:
    only on rank 0).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | Sequence[nn.Module], optimizer, *, T: float = 4.0,
                 alpha: float = 0.9, hints: FeatureHints | None = None, hint_weight: float = 1.0,
                 combine: str = "probs", progress: bool | None = None):
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be an nn.Module, got {type(student).__name__}")
        self.T, self.alpha = _check_temperature(T), _check_alpha(alpha)
        if isinstance(teacher, nn.Module):
            self.teacher = teacher
        else:
            self.teacher = EnsembleTeacher(teacher, combine=combine, T=self.T)
        if (isinstance(self.teacher, EnsembleTeacher) and self.teacher.combine == "probs"
                and self.teacher.T != self.T):
            raise ValueError(f"the ensemble teacher averages probabilities at T={self.teacher.T} but the loss uses "
                             f"T={self.T}: build it with the same T")
        if hints is not None and not isinstance(hints, FeatureHints):
            raise TypeError(f"hints must be a FeatureHints, got {type(hints).__name__}")
        if not math.isfinite(hint_weight) or hint_weight < 0:
            raise ValueError(f"hint_weight must be a non-negative number, got {hint_weight!r}")
        if not hasattr(optimizer, "step") or not hasattr(optimizer, "zero_grad"):
            raise TypeError(f"optimizer must be a torch optimizer, got {type(optimizer).__name__}")
        self.student, self.optimizer, self.hints, self.hint_weight = student, optimizer, hints, float(hint_weight)
        self.progress = progress
        if self._distributed() and hints is not None:
            # like DDP's constructor: every rank starts from rank 0's projections (then grads are averaged)
            with torch.no_grad():
                for p in hints.parameters():
                    torch.distributed.broadcast(p, src=0)

    @staticmethod
    def _distributed() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def _device(self) -> torch.device:
        p = next(self.student.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _sync_hint_grads(self) -> None:
        if self.hints is None or not self._distributed():
            return
        dist = torch.distributed
        world = dist.get_world_size()
        for p in self.hints.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """One optimizer step on a batch; returns the batch's loss terms as floats."""
        device = self._device()
        x = x.to(device)
        y = None if y is None else y.to(device)
        self.student.train()
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        student_logits = self.student(x)
        soft, hard = _kd_terms(student_logits, teacher_logits, y, self.T, self.alpha)
        loss = soft if hard is None else soft + hard
        hint = None
        if self.hints is not None:
            hint = self.hint_weight * self.hints.loss()
            loss = loss + hint
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"distillation loss is {loss.item()} (soft={soft.item()}, "
                                     f"hard={None if hard is None else hard.item()}); lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._sync_hint_grads()
        self.optimizer.step()
        return {"loss": loss.item(), "soft": soft.item(), "hard": 0.0 if hard is None else hard.item(),
                "hint": 0.0 if hint is None else hint.item()}

    def fit(self, data: Iterable | Callable[[], Iterable], epochs: int = 1,
            evaluate: Callable[[nn.Module], float | Mapping[str, float]] | None = None) -> list[dict]:
        """Runs ``epochs`` passes over ``data`` and returns one history row per epoch.

        ``data`` yields ``(x, y)``, ``(x,)`` or ``x`` batches; it must be re-iterable (a DataLoader, a list) or a
        zero-argument callable returning fresh batches (e.g. ``lambda: train.batches(64)``). Rows hold the
        sample-weighted means of ``loss``, ``soft``, ``hard`` and ``hint``, ``samples``, ``seconds`` and what
        ``evaluate(student)`` returns (a float is stored as ``"eval"``).
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if not callable(data) and iter(data) is data and epochs > 1:
            raise ValueError("data is an iterator, exhausted after one epoch: pass a re-iterable or a callable "
                             "returning fresh batches (e.g. lambda: train.batches(64))")
        from tqdm.auto import tqdm

        show = self.progress
        if show is None:
            show = not self._distributed() or torch.distributed.get_rank() == 0
        teacher_mode = self.teacher.training
        self.teacher.eval()
        history = []
        try:
            for epoch in range(epochs):
                batches = data() if callable(data) else data
                start, sums, samples = time.perf_counter(), {"loss": 0.0, "soft": 0.0, "hard": 0.0, "hint": 0.0}, 0
                bar = tqdm(batches, desc=f"distill {epoch + 1}/{epochs}", disable=not show, leave=False)
                for batch in bar:
                    x, y = _unpack(batch)
                    terms = self.step(x, y)
                    n = x.shape[0]
                    samples += n
                    for k in sums:
                        sums[k] += terms[k] * n
                    bar.set_postfix(loss=f"{terms['loss']:.4f}", refresh=False)
                bar.close()
                if samples == 0:
                    raise ValueError(f"data yielded no batches in epoch {epoch + 1}")
                row = {"epoch": epoch + 1, **{k: v / samples for k, v in sums.items()}, "samples": samples,
                       "seconds": time.perf_counter() - start}
                if evaluate is not None:
                    result = evaluate(self.student)
                    row.update(result if isinstance(result, Mapping) else {"eval": float(result)})
                history.append(row)
        finally:
            self.teacher.train(teacher_mode)
        return history
