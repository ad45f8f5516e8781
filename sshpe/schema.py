"""Keypoint schemas as data: names, flip pairs, OKS sigmas, skeleton and joint weights (DESIGN decision 7).

A schema is everything that differs between COCO-17, MPII-16, AI-Challenger-14 and the reference's 24-joint
union; no other module branches on the dataset.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

SchemaName = Literal["coco17", "mpii16", "aic14", "union24"]


@dataclass(frozen=True)
class KeypointSchema:
    """One keypoint definition.

    Attributes:
        name: schema key used by recipes and manifests.
        names: joint names, in channel order.
        flip_pairs: 0-based (left, right) channel pairs swapped by a horizontal flip.
        sigmas: per-joint OKS sigmas (COCO convention: the values divided by 10 in the COCO paper).
        skeleton: 0-based limb pairs for drawing.
        joint_weights: per-joint loss weights (HRNet's `use_different_joints_weight`; 1 = off).
        to_coco: for each channel the COCO-17 index it maps to, or -1 (used by union24 at evaluation).
    """

    name: str
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]
    skeleton: tuple[tuple[int, int], ...]
    joint_weights: tuple[float, ...]
    to_coco: tuple[int, ...] = field(default=())

    @property
    def num_joints(self) -> int:
        return len(self.names)

    def flip_index(self) -> list[int]:
        """Channel permutation that a horizontal flip applies: `hm_flipped = hm[:, flip_index()]`."""
        return flip_index_from_pairs(self.num_joints, self.flip_pairs)

    def as_metadata(self) -> dict:
        """A JSON-ready description stored in manifests and safetensors metadata."""
        return {
            "name": self.name,
            "names": list(self.names),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "sigmas": list(self.sigmas),
            "skeleton": [list(p) for p in self.skeleton],
            "joint_weights": list(self.joint_weights),
        }


def flip_index_from_pairs(num_joints: int, flip_pairs) -> list[int]:
    """Channel permutation swapping every (left, right) pair; also used on schemas read from model metadata."""
    perm = list(range(num_joints))
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return perm


_SIDE_WORDS = {"left": "left", "l": "left", "right": "right", "r": "right"}


def joint_sides(names: Sequence[str], flip_pairs: Iterable[Sequence[int]]) -> list[str]:
    """Per joint "left", "right" or "centre", for drawing: a side word in the name (`left_knee`, `r_ankle`) decides;
    a flip-paired joint without one takes "left" for the first of its pair and "right" for the second; joints in no
    pair and without a side word are "centre"."""
    sides = ["centre"] * len(names)
    for a, b in flip_pairs:
        sides[a], sides[b] = "left", "right"
    for i, name in enumerate(names):
        words = [_SIDE_WORDS[w] for w in re.split(r"[^a-z]+", name.lower()) if w in _SIDE_WORDS]
        if words:
            sides[i] = words[0]
    return sides


COCO_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
COCO_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
    0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
# COCO's own 1-based skeleton from person_keypoints_*.json, made 0-based.
COCO_SKELETON = tuple(
    (a - 1, b - 1)
    for a, b in (
        (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
        (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
    )
)  # fmt: skip

COCO17 = KeypointSchema(
    name="coco17",
    names=COCO_NAMES,
    flip_pairs=tuple((i, i + 1) for i in range(1, 17, 2)),
    sigmas=COCO_SIGMAS,
    skeleton=COCO_SKELETON,
    # HRNet lib/dataset/coco.py joints_weight: elbows/knees 1.2, wrists/ankles 1.5.
    joint_weights=(1.0,) * 7 + (1.2, 1.2, 1.5, 1.5) + (1.0, 1.0) + (1.2, 1.2, 1.5, 1.5),
    to_coco=tuple(range(17)),
)

MPII16 = KeypointSchema(
    name="mpii16",
    names=(
        "right_ankle",
        "right_knee",
        "right_hip",
        "left_hip",
        "left_knee",
        "left_ankle",
        "pelvis",
        "thorax",
        "upper_neck",
        "head_top",
        "right_wrist",
        "right_elbow",
        "right_shoulder",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
    ),  # fmt: skip
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    # mmpose configs/_base_/datasets/mpii.py
    sigmas=(
        0.089,
        0.083,
        0.107,
        0.107,
        0.083,
        0.089,
        0.026,
        0.026,
        0.026,
        0.026,
        0.062,
        0.072,
        0.179,
        0.179,
        0.072,
        0.062,
    ),  # fmt: skip
    skeleton=(
        (0, 1),
        (1, 2),
        (2, 6),
        (3, 6),
        (3, 4),
        (4, 5),
        (6, 7),
        (7, 8),
        (8, 9),
        (7, 12),
        (12, 11),
        (11, 10),
        (7, 13),
        (13, 14),
        (14, 15),
    ),  # fmt: skip
    joint_weights=(1.5, 1.2, 1.0, 1.0, 1.2, 1.5, 1.0, 1.0, 1.0, 1.0, 1.5, 1.2, 1.0, 1.0, 1.2, 1.5),
    to_coco=(16, 14, 12, 11, 13, 15, -1, -1, -1, -1, 10, 8, 6, 5, 7, 9),
)

AIC14 = KeypointSchema(
    name="aic14",
    names=(
        "right_shoulder",
        "right_elbow",
        "right_wrist",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
        "right_hip",
        "right_knee",
        "right_ankle",
        "left_hip",
        "left_knee",
        "left_ankle",
        "head_top",
        "neck",
    ),  # fmt: skip
    flip_pairs=((0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11)),
    # mmpose configs/_base_/datasets/aic.py
    sigmas=(
        0.01388152,
        0.01515228,
        0.01057665,
        0.01417709,
        0.01497891,
        0.01402144,
        0.03909642,
        0.03686941,
        0.01981803,
        0.03843971,
        0.03412318,
        0.02415081,
        0.01291456,
        0.01236173,
    ),  # fmt: skip
    skeleton=(
        (2, 1),
        (1, 0),
        (0, 13),
        (13, 3),
        (3, 4),
        (4, 5),
        (8, 7),
        (7, 6),
        (6, 9),
        (9, 10),
        (10, 11),
        (12, 13),
        (0, 6),
        (3, 9),
    ),  # fmt: skip
    joint_weights=(1.0, 1.2, 1.5, 1.0, 1.2, 1.5, 1.0, 1.2, 1.5, 1.0, 1.2, 1.5, 1.0, 1.0),
    to_coco=(6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, -1, -1),
)

# Reference §1.1: SHP/MA/SSPCM's 24-channel union skeleton; 7 channels are dummies for COCO.
_UNION_NAMES = (
    "root", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "belly",
    "thorax", "neck", "upper_neck", "nose", "head", "head_top", "left_shoulder", "left_elbow", "left_wrist",
    "right_shoulder", "right_elbow", "right_wrist", "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip
_UNION_TO_COCO = (-1, 12, 14, 16, 11, 13, 15, -1, -1, -1, -1, 0, -1, -1, 5, 7, 9, 6, 8, 10, 2, 1, 4, 3)
UNION24 = KeypointSchema(
    name="union24",
    names=_UNION_NAMES,
    flip_pairs=((1, 4), (2, 5), (3, 6), (14, 17), (15, 18), (16, 19), (20, 21), (22, 23)),
    sigmas=tuple(COCO_SIGMAS[c] if c >= 0 else 0.1 for c in _UNION_TO_COCO),
    skeleton=(
        (3, 2),
        (2, 1),
        (6, 5),
        (5, 4),
        (1, 4),
        (17, 1),
        (14, 4),
        (17, 14),
        (17, 18),
        (18, 19),
        (14, 15),
        (15, 16),
        (11, 20),
        (11, 21),
        (20, 22),
        (21, 23),
    ),  # fmt: skip
    joint_weights=(1.0,) * 24,
    to_coco=_UNION_TO_COCO,
)

SCHEMAS: dict[str, KeypointSchema] = {s.name: s for s in (COCO17, MPII16, AIC14, UNION24)}


def get_schema(name: str) -> KeypointSchema:
    """Look a schema up by its recipe name; raises ValueError listing the known names."""
    if name not in SCHEMAS:
        raise ValueError(f"unknown keypoint schema {name!r}; known: {sorted(SCHEMAS)}")
    return SCHEMAS[name]


def coco_to_schema_index(schema: KeypointSchema) -> list[int]:
    """For each schema channel, the COCO-17 index that fills it (-1 for channels COCO does not label)."""
    return list(schema.to_coco)
