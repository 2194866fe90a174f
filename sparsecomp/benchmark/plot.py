"""Speedup-over-dense vs sparsity plot of a sparse sweep: one panel per batch size (a row of panels per case),
one line per method, break-even (speedup 1) marked. Layers measured at one sparsity each (a preset like
alexnet-conv) get bars per layer instead: one panel per batch, one bar per method."""
from __future__ import annotations

import math
from pathlib import Path

from .machine import describe
from .sparse_methods import LABELS

PLOTTED = ("sparsecomp", "torch_csr", "torch_bsr", "structured", "semi_structured_24")
STYLE = {"sparsecomp": ("C0", "o"), "torch_csr": ("C1", "s"), "torch_bsr": ("C4", "v"), "structured": ("C2", "^"),
         "semi_structured_24": ("C3", "d"), "sparsecomp_conv2d": ("C9", "P")}
MAX_CASE_ROWS = 12  # a preset of more layers still gets one figure, just a tall one


def plot_speedup(rows: list[dict], meta: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on benchmark machines
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    case_key = "case" if all("case" in r for r in rows) else "shape"
    batches = sorted({r["batch"] for r in rows})
    methods = [m for m in PLOTTED if any(r["speedup"].get(m) is not None for r in rows)]
    all_cases = list(dict.fromkeys(r[case_key] for r in rows))
    if len(all_cases) > 1 and all(len({r["sparsity"] for r in rows if r[case_key] == c}) == 1 for c in all_cases):
        return _plot_per_layer(rows, meta, path, case_key, all_cases, batches, methods)
    cases = all_cases[:MAX_CASE_ROWS]
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


def _plot_per_layer(rows, meta, path, case_key, cases, batches, methods) -> Path:
    """Layers each at their own sparsity (e.g. AlexNet at SSL's): one panel per batch, layers along x."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, len(batches), figsize=(max(5.0, 0.9 * len(cases) + 1.5) * len(batches), 4.6),
                             squeeze=False, sharey=True)
    def speedup(r, method):  # the conv bar: SparseConv2d over torch conv2d, both on images
        return r.get("conv_speedup") if method == "sparsecomp_conv2d" else r["speedup"].get(method)

    if any(r.get("conv_speedup") for r in rows):
        methods = [*methods, "sparsecomp_conv2d"]
    width = 0.8 / max(1, len(methods))
    for ax, batch in zip(axes[0], batches):
        by_case = {r[case_key]: r for r in rows if r["batch"] == batch}
        for mi, method in enumerate(methods):
            color, marker = STYLE[method]
            xs = [i + (mi - (len(methods) - 1) / 2) * width for i in range(len(cases))]
            ys = [(speedup(by_case[c], method) if c in by_case else None) for c in cases]
            ax.bar(xs, [math.nan if y is None else y for y in ys], width=width, color=color, label=LABELS[method])
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="break-even (dense F.linear)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([f"{c}\n{by_case[c]['sparsity']:.1%}" if c in by_case else c for c in cases],
                           fontsize=8)
        ax.set_title(f"batch {batch}", fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("speedup over dense (x)")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(f"sparse layers at their own sparsity, {meta['args']['dtype']} on {meta['machine']['device']}: "
                 f"{describe(meta['machine'])}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
