"""LowRankLinear: an nn.Linear whose weight is stored as a rank-r product W ~ U V (truncated SVD)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Kept energy is compared with a relative slack of this size so that an energy given as an exact ratio of sums of
# squared singular values (e.g. 25/30) selects that rank despite rounding in the SVD.
_ENERGY_RTOL = 1e-9


def choose_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest r with sum(s[:r]**2) >= energy * sum(s**2) (s sorted descending); 1 for an all-zero s."""
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be a number in (0, 1], got {energy!r}")
    sq = singular_values.double().square()
    total = float(sq.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(sq, 0) / total
    return min(int((kept < energy * (1.0 - _ENERGY_RTOL)).sum()) + 1, int(sq.numel()))


class LowRankLinear(nn.Module):
    """``y = F.linear(F.linear(x, V), U, bias)`` with ``U`` [out_features, rank] and ``V`` [rank, in_features].

    Two GEMMs of r * (in + out) multiply-adds per sample instead of in * out: smaller and faster when
    ``rank < in * out / (in + out)``. Build it from a trained layer with :meth:`from_dense` (truncated SVD, rank
    by kept energy); fine-tune it like any module (U, V and bias are parameters).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be an int in 1..min(in_features, out_features) = "
                             f"{min(in_features, out_features)}, got {rank!r}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        fk = {"device": device, "dtype": dtype}
        self.U = nn.Parameter(torch.empty(out_features, rank, **fk))
        self.V = nn.Parameter(torch.empty(rank, in_features, **fk))
        self.register_parameter("bias", nn.Parameter(torch.empty(out_features, **fk)) if bias else None)
        self.kept_energy: float | None = None  # set by from_dense: fraction of ||W||_F^2 the factors keep
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random factors whose product has nn.Linear's default scale (uniform, bound 1 / sqrt(in_features))."""
        bound_v = 1.0 / math.sqrt(self.in_features)
        # var((U V)[o, i]) = rank * var(U) * var(V): var(U) = 1 / rank (uniform bound sqrt(3 / rank)) gives the
        # product the variance of a default nn.Linear weight, 1 / (3 * in_features).
        bound_u = math.sqrt(3.0 / self.rank)
        nn.init.uniform_(self.V, -bound_v, bound_v)
        nn.init.uniform_(self.U, -bound_u, bound_u)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound_v, bound_v)

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int | None = None, energy: float = 0.9) -> "LowRankLinear":
        """Truncated SVD of ``linear.weight``: W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T), the best rank-r approximation
        in Frobenius norm (Eckart-Young). ``rank`` wins when given; otherwise the smallest rank keeping at least
        ``energy`` of sum(s**2). The square root of S goes to both factors so they train at the same scale."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        if not w.is_floating_point():
            raise TypeError(f"linear.weight must be floating point, got {w.dtype}")
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)  # float64: the factors are then rounded once
        if rank is None:
            r = choose_rank(s, energy)
        else:
            r = rank
            if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= s.numel():
                raise ValueError(f"rank must be an int in 1..min(in_features, out_features) = {s.numel()}, got "
                                 f"{rank!r}")
        module = cls(linear.in_features, linear.out_features, r, bias=linear.bias is not None, device=w.device,
                     dtype=w.dtype)
        root = s[:r].sqrt()
        with torch.no_grad():
            module.U.copy_(u[:, :r] * root)
            module.V.copy_(root.unsqueeze(1) * vh[:r])
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        total = float(s.double().square().sum())
        module.kept_energy = float(s[:r].square().sum()) / total if total > 0 else 1.0
        return module

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` with weight U @ V."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.U.device,
                        dtype=self.U.dtype)
        with torch.no_grad():
            lin.weight.copy_((self.U.double() @ self.V.double()).to(self.U.dtype))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"LowRankLinear: input must end with in_features={self.in_features}, got shape "
                             f"{tuple(x.shape)}")
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    # ------------------------------------------------------------------------------------------ reporting
    @property
    def dense_parameters(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias is not None else 0)

    @property
    def num_parameters(self) -> int:
        return self.rank * (self.in_features + self.out_features) + (self.out_features if self.bias is not None
                                                                     else 0)

    @property
    def parameter_savings(self) -> float:
        """1 - params / dense params (negative when the rank is too high to save anything)."""
        return 1.0 - self.num_parameters / self.dense_parameters

    def report(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "kept_energy": self.kept_energy, "params_before": self.dense_parameters,
                "params_after": self.num_parameters, "parameter_savings": self.parameter_savings}

    def extra_repr(self) -> str:
        s = (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
             f"bias={self.bias is not None}, params {self.num_parameters}/{self.dense_parameters} dense")
        if self.kept_energy is not None:
            s += f", kept_energy={self.kept_energy:.4f}"
        return s
