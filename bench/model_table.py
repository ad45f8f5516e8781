"""Prints the docs/models.md table: parameters and both FLOP conventions next to the HRNet README numbers.

Usage: PYTHONPATH=. python bench/model_table.py  (models are built on the meta device, so it needs no weights and ~20 s)
"""

from __future__ import annotations

import torch

from sshpe.models import build_model, model_info

# Reference §8.1 (HRNet README, COCO val2017 table; R18 computed in the reference): (params M, "GFLOPs").
PUBLISHED: dict[tuple[str, tuple[int, int]], tuple[float, float | None]] = {
    ("resnet18", (256, 192)): (15.38, 5.8),
    ("resnet18", (384, 288)): (15.38, None),
    ("resnet50", (256, 192)): (34.0, 8.9),
    ("resnet50", (384, 288)): (34.0, 20.0),
    ("resnet101", (256, 192)): (53.0, 12.4),
    ("resnet101", (384, 288)): (53.0, 27.9),
    ("resnet152", (256, 192)): (68.6, 15.7),
    ("resnet152", (384, 288)): (68.6, 35.3),
    ("hrnet_w32", (256, 192)): (28.5, 7.1),
    ("hrnet_w32", (384, 288)): (28.5, 16.0),
    ("hrnet_w48", (256, 192)): (63.6, 14.6),
    ("hrnet_w48", (384, 288)): (63.6, 32.9),
}


def model_rows(num_joints: int = 17) -> list[str]:
    """One markdown row per (arch, input size) in `PUBLISHED`."""
    rows = []
    for (arch, hw), (pub_params, pub_gflops) in PUBLISHED.items():
        with torch.device("meta"):
            model = build_model(arch, num_joints)
        info = model_info(model, hw)
        pub = "–" if pub_gflops is None else f"{pub_gflops:.1f}"
        star = "*" if arch == "resnet18" else ""  # not in the README table: the reference's own recount
        rows.append(
            f"| {arch} | {hw[0]}×{hw[1]} | {info['params'] / 1e6:.3f}M | {pub_params}M{star} | "
            f"{info['hrnet_gflops']:.2f} | {pub}{star if pub_gflops else ''} | {info['gmacs']:.2f} |"
        )
    return rows


def main() -> None:
    print(
        "| arch | input | params (ours) | params (published) | GFLOPs, README convention (ours) "
        "| GFLOPs (published) | true GMACs (flop_counter / 2) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in model_rows():
        print(row)


if __name__ == "__main__":
    main()
