"""Timing utilities shared by the benchmark suites: fair timing and a result check.

Fairness rules built into :func:`measure`:
- methods are timed interleaved (round-robin inside every repeat, starting point rotated each repeat), so
  machine drift (turbo, thermal, a neighbour process) hits every method alike instead of the one timed last;
- every method is warmed up on every input first (allocator caches, lazy init, branch predictors);
- calls rotate through several pre-generated inputs, so no method is flattered by an input that stays hot
  in cache across calls;
- setup is never timed: callers build each callable (weights converted, inputs made) before calling
  ``measure``, which only times ``fn(x)``; an optional ``before_sample`` hook (cache eviction) is untimed too;
- on CUDA the device is synchronized before and after each timed sample (kernels launch asynchronously).
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

#: upper bound on calls per timed sample when ``min_sample_s`` asks for batching of very fast calls
MAX_CALLS_PER_SAMPLE = 1000


@dataclass(frozen=True)
class Timing:
    """Per-call seconds of one method, one sample per repeat (a sample may average several calls)."""

    samples_s: tuple[float, ...]
    calls_per_sample: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3

    @property
    def quartiles_ms(self) -> tuple[float, float]:
        """(25th, 75th) percentile in ms: the spread to read a median against."""
        if len(self.samples_s) < 2:
            return (self.median_ms, self.median_ms)
        q1, _, q3 = statistics.quantiles(self.samples_s, n=4, method="inclusive")
        return (q1 * 1e3, q3 * 1e3)


class ResultMismatch(AssertionError):
    """Two methods that should compute the same function do not."""


def _synchronizer(device: str | torch.device | None, inputs: Sequence[Any]) -> Callable[[], None]:
    if device is None:
        first = inputs[0]
        device = first.device if isinstance(first, torch.Tensor) else "cpu"
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def measure(fns: Mapping[str, Callable[[Any], Any]], inputs: Sequence[Any], repeats: int = 20, warmup: int = 2,
            min_sample_s: float = 0.0, device: str | torch.device | None = None,
            before_sample: Callable[[], Any] | None = None) -> dict[str, Timing]:
    """Times ``fn(x)`` for every method; returns ``{name: Timing}`` (use ``.median_ms``).

    ``fns`` maps a method name to a ready-to-run callable taking one input; build everything it needs before
    calling (that setup is not timed). ``inputs`` are used in turn; every method sees the same input in the
    same repeat. ``warmup`` rounds run every method on every input, untimed. A sample averages enough calls
    to last ``min_sample_s`` (0: one call), which keeps timer and sync overhead out of microsecond kernels.
    ``device`` (default: the device of ``inputs[0]``) decides whether to synchronize CUDA around samples.
    ``before_sample`` runs untimed before every sample, e.g. to evict caches so weights start cold.
    """
    if not fns:
        raise ValueError("measure: fns is empty")
    if len(inputs) == 0:
        raise ValueError("measure: inputs is empty")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure: need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    sync = _synchronizer(device, inputs)
    names = list(fns)
    n_inputs = len(inputs)

    for _ in range(warmup):
        for name in names:
            for x in inputs:
                fns[name](x)
    sync()

    calls = {name: _calls_per_sample(fns[name], inputs[0], min_sample_s, sync) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection landing inside one method's sample would bias it
    try:
        for r in range(repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn, k = fns[name], calls[name]
                xs = [inputs[(r * k + i) % n_inputs] for i in range(k)]
                if before_sample is not None:
                    before_sample()
                sync()
                t0 = time.perf_counter()
                for x in xs:
                    fn(x)
                sync()
                samples[name].append((time.perf_counter() - t0) / k)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(tuple(samples[name]), calls[name]) for name in names}


def _calls_per_sample(fn: Callable[[Any], Any], x: Any, min_sample_s: float, sync: Callable[[], None]) -> int:
    if min_sample_s <= 0:
        return 1
    sync()
    t0 = time.perf_counter()
    fn(x)
    sync()
    one_call = max(time.perf_counter() - t0, 1e-9)
    return max(1, min(MAX_CALLS_PER_SAMPLE, math.ceil(min_sample_s / one_call)))


def cache_flusher(megabytes: float, device: str | torch.device) -> Callable[[], Any] | None:
    """A callable that reads ``megabytes`` of memory (evicting cached weights), or None for 0.

    It reads rather than writes: written lines would be dirty, and writing them back would be charged to the
    timed call that evicts them. The buffer is written once here so its pages are real, not the zero page.
    """
    if megabytes <= 0:
        return None
    buffer = torch.ones(int(megabytes * 2**20) // 4, dtype=torch.float32, device=device)
    return lambda: buffer.sum()


def check_same_result(outputs: Mapping[str, torch.Tensor], ref: torch.Tensor, rtol: float, atol: float) -> None:
    """Raises :class:`ResultMismatch` naming every method whose output differs from ``ref``.

    Compared in float64 elementwise as ``|out - ref| <= atol + rtol * |ref|`` (NaN never matches).
    """
    ref64 = ref.detach().to(device="cpu", dtype=torch.float64)
    problems = []
    for name, out in outputs.items():
        if not isinstance(out, torch.Tensor):
            problems.append(f"{name}: returned {type(out).__name__}, expected a tensor")
            continue
        if tuple(out.shape) != tuple(ref64.shape):
            problems.append(f"{name}: shape {tuple(out.shape)} != reference shape {tuple(ref64.shape)}")
            continue
        out64 = out.detach().to(device="cpu", dtype=torch.float64)
        close = torch.isclose(out64, ref64, rtol=rtol, atol=atol)
        if bool(close.all()):
            continue
        err = (out64 - ref64).abs().nan_to_num(nan=math.inf)
        worst = int(err.flatten().argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), out64.shape))
        problems.append(
            f"{name}: {int((~close).sum())} of {close.numel()} elements differ; worst at {index}: "
            f"out={out64.flatten()[worst].item():.6g}, ref={ref64.flatten()[worst].item():.6g} "
            f"(allowed |out - ref| <= {atol:g} + {rtol:g} * |ref|)")
    if problems:
        raise ResultMismatch("methods disagree with the reference:\n  " + "\n  ".join(problems))


from .crossover import crossover  # noqa: E402,F401  (re-exported: it used to live here)
