"""Pseudo-label accuracy over training, per method: the teachers' PCK@0.05 against the hidden ground truth
(`train/pseudo_pck`, logged every `log_every` steps) read from the run folders `bench/bench_methods.py` wrote, as a
markdown table: per column the mean of the values logged since the previous column, then over seeds. Reads only;
trains nothing.

    python bench/pseudo_curves.py runs/bench_methods/2p5pct [--steps 30 150 300 450 600]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curve(run: Path, steps: list[int]) -> dict[int, float]:
    """pseudo PCK of one run folder at each of `steps`: the mean of the values logged since the previous one (each
    logged value is one unlabeled batch, so single values are noisy)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = sorted((r["step"], r["train/pseudo_pck"]) for r in rows if "train/pseudo_pck" in r)
    out, prev = {}, 0
    for s in steps:
        window = [v for step, v in logged if prev < step <= s]
        if window:
            out[s] = sum(window) / len(window)
        prev = s
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="a labeled-fraction folder of bench_methods runs (method/seedN/)")
    p.add_argument("--steps", nargs="+", type=int, default=[30, 150, 300, 450, 600])
    args = p.parse_args()
    lines = ["| method | " + " | ".join(f"step {s}" for s in args.steps) + " |", "|---" * (len(args.steps) + 1) + "|"]
    for method in sorted(p.name for p in args.root.iterdir() if p.is_dir() and p.name not in ("burn_in", "init")):
        curves = [curve(run, args.steps) for run in sorted((args.root / method).glob("seed*"))]
        cells = []
        for s in args.steps:
            vals = [c[s] for c in curves if s in c]
            cells.append(f"{100 * sum(vals) / len(vals):.1f}" if vals else "")
        if any(cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
