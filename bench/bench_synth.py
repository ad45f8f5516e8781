"""Throughput of `sshpe synth`: renders N images at W x H into a temporary folder and prints images/s and persons/s
(wall clock, and per CPU second of this process for workers=0).

Usage: python bench/bench_synth.py [--num 200] [--size 480 360] [--workers 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sshpe.synth import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=200, help="images to render (all in the train split)")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 360), metavar=("W", "H"), help="image size, px")
    parser.add_argument("--workers", type=int, default=0, help="rendering processes (0 = in process)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        summary = generate(Path(tmp), num_train=args.num, num_val=0, image_size=tuple(args.size),
                           workers=args.workers, progress=False)  # fmt: skip
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    persons = summary["persons"]["train"]
    print(
        f"sshpe synth: {args.num} images {args.size[0]}x{args.size[1]}, workers={args.workers}: "
        f"{summary['images_per_s']:.1f} images/s rendering+JPEG, {args.num / total:.1f} images/s end to end "
        f"({persons} persons, {persons / total:.1f} persons/s); this process: {args.num / cpu:.1f} images/s, "
        f"{persons / cpu:.1f} persons/s per CPU second"
    )


if __name__ == "__main__":
    main()
