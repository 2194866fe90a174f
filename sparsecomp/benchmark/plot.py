"""Speedup-over-dense vs sparsity plot of a sparse sweep: one panel per batch size (a row of panels per case),
one line per method, break-even (speedup 1) marked."""
from __future__ import annotations

import math
from pathlib import Path

from .machine import describe
from .sparse_methods import LABELS

PLOTTED = ("sparsecomp", "torch_csr", "torch_bsr", "structured", "semi_structured_24")
STYLE = {"sparsecomp": ("C0", "o"), "torch_csr": ("C1", "s"), "torch_bsr": ("C4", "v"), "structured": ("C2", "^"),
         "semi_structured_24": ("C3", "d")}
MAX_CASE_ROWS = 12  # a preset of more layers still gets one figure, just a tall one


def plot_speedup(rows: list[dict], meta: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on benchmark machines
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    case_key = "case" if all("case" in r for r in rows) else "shape"
    cases = list(dict.fromkeys(r[case_key] for r in rows))[:MAX_CASE_ROWS]
    batches = sorted({r["batch"] for r in rows})
    methods = [m for m in PLOTTED if any(r["speedup"].get(m) is not None for r in rows)]
    fig, axes = plt.subplots(len(cases), len(batches), figsize=(4.6 * len(batches), 3.6 * len(cases) + 0.6),
                             squeeze=False, sharey=True)
    for ci, case in enumerate(cases):
        for bi, batch in enumerate(batches):
            ax = axes[ci][bi]
            pts = sorted((r["sparsity"], r["speedup"]) for r in rows if r["batch"] == batch and r[case_key] == case)
            if not pts:
                ax.set_visible(False)
                continue
            for method in methods:
                color, marker = STYLE[method]
                ys = [sp.get(method) for _, sp in pts]
                ax.plot([s for s, _ in pts], [math.nan if y is None else y for y in ys], color=color, marker=marker,
                        label=LABELS[method])
            ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="break-even (dense F.linear)")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.set_xlabel("sparsity (fraction of weights zero)")
            ax.set_title(f"{case}, batch {batch}" if len(cases) > 1 else f"batch {batch}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        axes[ci][0].set_ylabel("speedup over dense (x)")
    handles, labels = next((ax.get_legend_handles_labels() for ax in axes.flat if ax.get_visible()), ([], []))
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(len(labels), 6) or 1)
    shape_note = f" ({cases[0]})" if len(cases) == 1 else ""
    fig.suptitle(f"sparse linear{shape_note} {meta['args']['dtype']} on {meta['machine']['device']}: "
                 f"{describe(meta['machine'])}", fontsize=10)
    fig.tight_layout(rect=(0, 0.6 / (3.6 * len(cases) + 0.6) + 0.02, 1, 0.97))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
