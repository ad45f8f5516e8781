"""Oracle AP: COCO AP of ground-truth targets sent through the whole evaluation chain.

Renders the Gaussian targets of every val crop, decodes them, maps them back to image coordinates, rescores,
OKS-NMS and COCOeval: the ceiling that heatmap resolution and decoding leave for a recipe's input size.
Usage: python bench/oracle_ap.py RECIPE [section.field=value ...] (run where the recipe's shards exist).
"""

import sys

from sshpe.evaluation.oracle import oracle_ap
from sshpe.recipe import load_recipe

if __name__ == "__main__":
    recipe = load_recipe(sys.argv[1], sys.argv[2:])
    print({k: round(v * 100, 1) for k, v in oracle_ap(recipe).items()})
