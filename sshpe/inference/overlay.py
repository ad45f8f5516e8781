"""Pose overlays for `sshpe predict`: left joints and limbs in one colour, right in another, centre in a third (sides
from the keypoint schema, `schema.joint_sides`), with the person box and its box and pose scores."""

from __future__ import annotations

import cv2
import numpy as np

SIDE_BGR = {"left": (255, 140, 0), "right": (0, 140, 255), "centre": (60, 200, 60)}  # blue, orange, green
BOX_BGR = (255, 255, 255)


def limb_side(side_a: str, side_b: str) -> str:
    """A limb is drawn on the side of its joints: one side with the centre keeps that side; left to right (the
    shoulder or hip line) is centre."""
    sides = {side_a, side_b} - {"centre"}
    return sides.pop() if len(sides) == 1 else "centre"


def draw_person(
    img: np.ndarray,
    kpts: np.ndarray,
    bbox: list[float],
    box_score: float,
    score: float,
    skeleton: list[list[int]],
    sides: list[str],
    thr: float = 0.2,
) -> None:
    """Draw one person onto a BGR uint8 image, in place.

    Args:
        img: (H, W, 3) BGR uint8.
        kpts: (K, 3) x, y in image px and the joint confidence; joints at or below `thr` are not drawn.
        bbox: [x, y, w, h] the person box in image px.
        box_score: the detector's score of the box; score: the pose score (mean confident joint x box score).
        skeleton: 0-based joint pairs to connect.
        sides: "left" / "right" / "centre" per joint (`sshpe.schema.joint_sides`).
        thr: confidence threshold for drawing a joint or a limb.
    """
    thick = max(1, round(min(img.shape[:2]) / 300))
    x, y, w, h = (int(round(v)) for v in bbox)
    cv2.rectangle(img, (x, y), (x + w, y + h), BOX_BGR, thick, cv2.LINE_8)
    label = f"box {box_score:.2f} pose {score:.2f}"
    font_scale = 0.35 * thick
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    ty = y - 2 if y - th - base - 2 >= 0 else y + th + 2
    cv2.rectangle(img, (x, ty - th - 1), (x + tw, ty + base - 1), (0, 0, 0), -1)
    cv2.putText(img, label, (x, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, BOX_BGR, 1, cv2.LINE_AA)
    pts = [(int(round(px)), int(round(py))) for px, py in kpts[:, :2]]
    for a, b in skeleton:
        if kpts[a, 2] > thr and kpts[b, 2] > thr:
            cv2.line(img, pts[a], pts[b], SIDE_BGR[limb_side(sides[a], sides[b])], 2 * thick, cv2.LINE_AA)
    for (px, py), s, side in zip(pts, kpts[:, 2], sides):
        if s > thr:
            cv2.circle(img, (px, py), 2 * thick + 1, SIDE_BGR[side], -1, cv2.LINE_AA)
