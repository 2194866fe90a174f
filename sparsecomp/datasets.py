"""Built-in data for examples, tests and the demo: scikit-learn's 8x8 handwritten digits (shipped with
scikit-learn, no download). 1797 images, 10 classes."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # float32, [n, 64] (flat) or [n, 1, 8, 8] (images), standardized with the train statistics
    y: torch.Tensor  # int64 class labels, [n]

    def batches(self, batch_size: int, shuffle: bool = True, generator: torch.Generator | None = None):
        """Yield (x, y) mini-batches; a fresh permutation each call when shuffle is set."""
        n = self.y.shape[0]
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield self.x[idx], self.y[idx]


def digits(images: bool = False, test_fraction: float = 0.25, seed: int = 0) -> tuple[Split, Split]:
    """(train, test) splits of the digits data set, stratified-free random split fixed by ``seed``.

    Pixels (0..16) are standardized with the training set's mean and std so that small models train fast.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - the package's test/examples extras install it
        raise ImportError("sparsecomp.datasets.digits needs scikit-learn: pip install scikit-learn") from err
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = int(round(x.shape[0] * test_fraction))
    test_idx, train_idx = order[:n_test], order[n_test:]
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return Split(x[train_idx], y[train_idx]), Split(x[test_idx], y[test_idx])
