"""Speedup-over-dense vs sparsity plot of a sweep_sparse.py result (one panel per batch size)."""
from __future__ import annotations

import math
from pathlib import Path

from bench.machine import describe
from bench.sparse_linear_methods import LABELS

PLOTTED = ("sparsecomp", "torch_csr", "structured", "semi_structured_24")
STYLE = {"sparsecomp": ("C0", "o"), "torch_csr": ("C1", "s"), "structured": ("C2", "^"),
         "semi_structured_24": ("C3", "d")}
SHAPE_LINESTYLES = ("-", "--", ":", "-.")


def plot_speedup(rows: list[dict], meta: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on benchmark machines
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    batches = sorted({r["batch"] for r in rows})
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    methods = [m for m in PLOTTED if any(r["speedup"].get(m) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4.2), squeeze=False, sharey=True)
    for ax, batch in zip(axes[0], batches):
        for si, shape in enumerate(shapes):
            pts = sorted((r["sparsity"], r["speedup"]) for r in rows if r["batch"] == batch and r["shape"] == shape)
            for method in methods:
                color, marker = STYLE[method]
                ys = [sp.get(method) for _, sp in pts]
                label = LABELS[method] + (f" {shape}" if len(shapes) > 1 else "")
                ax.plot([s for s, _ in pts], [math.nan if y is None else y for y in ys], color=color,
                        marker=marker, linestyle=SHAPE_LINESTYLES[si % len(SHAPE_LINESTYLES)], label=label)
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="break-even (dense)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_xlabel("sparsity (fraction of weights zero)")
        ax.set_title(f"batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("speedup over dense F.linear (x)")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(f"sparse linear {meta['args']['dtype']} on {meta['machine']['device']}: {describe(meta['machine'])}",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
