"""Markdown table of a `pytest bench/ --benchmark-only --benchmark-json=FILE` run: medians per method and the
ratios of sparsecomp against dense F.linear and torch.sparse CSR, per (batch, sparsity) group."""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

GROUP = re.compile(r"(?P<shape>\d+x\d+)-b(?P<batch>\d+)-s(?P<sparsity>[\d.]+)")


def table(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    medians: dict[tuple, dict[str, float]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        key = GROUP.fullmatch(bench["group"])
        if key is None:
            continue
        method = (bench.get("params") or {}).get("method") or bench["name"].rsplit("-", 1)[1].rstrip("]")
        medians[(key["shape"], int(key["batch"]), float(key["sparsity"]))][method] = bench["stats"]["median"] * 1e3
    lines = ["| shape | batch | sparsity | dense ms | sparsecomp ms | torch CSR ms | speedup vs dense | vs CSR |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (shape, batch, sparsity), m in sorted(medians.items()):
        if not {"dense", "sparsecomp", "torch_csr"} <= m.keys():
            continue
        lines.append(f"| {shape} | {batch} | {sparsity:g} | {m['dense']:.3f} | {m['sparsecomp']:.3f} | "
                     f"{m['torch_csr']:.3f} | {m['dense'] / m['sparsecomp']:.2f}x | "
                     f"{m['torch_csr'] / m['sparsecomp']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("benchmark_json")
    print(table(parser.parse_args(argv).benchmark_json))


if __name__ == "__main__":
    main()
