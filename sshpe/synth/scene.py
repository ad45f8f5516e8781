"""One synthetic image for `sshpe synth`: cluttered background, 1-N overlapping figures, occluder objects,
photometric variation, and the COCO keypoint labels and simulated person detections that go with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from sshpe.synth.figures import LABELS_PER_LAYER, Figure, draw_shape, render_figure, sample_figure


@dataclass(frozen=True)
class SceneKnobs:
    """Difficulty knobs (see `sshpe.synth.generate` for their meaning)."""

    clutter: float = 1.0
    occluders: float = 0.3
    max_people: int = 3
    person_height: tuple[float, float] = (40.0, 200.0)
    photometric: float = 1.0


@dataclass
class Scene:
    """A rendered image and its labels.

    Attributes:
        img: (H, W, 3) uint8 BGR, after photometric variation (before JPEG).
        label: (H, W) int32 part labels: 0 background, else layer * LABELS_PER_LAYER + part rank + 1.
        persons: per kept person: keypoints (17, 3) float [x, y, v] image px, bbox [x, y, w, h], area (visible
            silhouette pixel count), num_keypoints, facing, pose, layer.
        detections: simulated detector output: bbox [x, y, w, h] image px and score in (0, 1].
    """

    img: np.ndarray
    label: np.ndarray
    persons: list[dict]
    detections: list[dict]


def render_background(ss: np.random.SeedSequence, image_size: tuple[int, int], clutter: float) -> np.ndarray:
    """A cluttered background: gradient + low-frequency texture + shapes, lines and limb-like strokes.

    Args:
        ss: the background's own seed sequence (so it can be re-rendered without people).
        image_size: (W, H) px.
        clutter: scales the number of shapes (0 = plain gradient and texture).

    Returns:
        (H, W, 3) uint8 BGR.
    """
    rng = np.random.default_rng(ss)
    w, h = image_size
    c0, c1 = rng.uniform(0, 255, (2, 3))
    ang = rng.uniform(0, 2 * math.pi)
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    t = xs[None, :] * math.cos(ang) + ys[:, None] * math.sin(ang)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t[..., None]
    coarse = rng.standard_normal((h // 16 + 2, w // 16 + 2, 3), dtype=np.float32) * np.float32(rng.uniform(5, 30))
    img += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.poisson(12 * clutter)):
        _draw_clutter(img, rng, w, h)
    return img


def _draw_clutter(img: np.ndarray, rng: np.random.Generator, w: int, h: int) -> None:
    """One random rectangle, ellipse, line or limb-like stroke (1-3 connected tapered capsules)."""
    colour = rng.uniform(0, 255, 3)
    kind = rng.integers(4)
    p = rng.uniform((0, 0), (w, h))
    size = rng.uniform(5, 0.35 * min(w, h))
    if kind == 0:
        quad = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * rng.uniform(0.3, 1.0, 2) * size
        rot = rng.uniform(0, math.pi)
        rmat = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
        draw_shape(img, None, 0, ("poly", colour, quad @ rmat.T + p))
    elif kind == 1:
        draw_shape(img, None, 0, ("ellipse", colour, p, tuple(rng.uniform(0.2, 1.0, 2) * size)))
    elif kind == 2:
        q = p + rng.normal(0, size, 2)
        draw_shape(img, None, 0, ("line", colour, p, q, rng.uniform(1, 4)))
    else:
        r = rng.uniform(1.5, 8)
        for _ in range(rng.integers(1, 4)):
            q = p + rng.normal(0, 1, 2) / 1.4 * rng.uniform(10, 45)
            r2 = r * rng.uniform(0.7, 1.0)
            draw_shape(img, None, 0, ("capsule", colour, p, q, r, r2))
            p, r = q, r2


def _draw_occluder(img: np.ndarray, label: np.ndarray, value: int, rng: np.random.Generator, fig: Figure) -> None:
    """A box or a pole over part of `fig` (placed at one of its joints)."""
    colour = rng.uniform(0, 255, 3)
    anchor = fig.kpts_img[rng.integers(17)] + rng.normal(0, 0.1 * fig.height_px, 2)
    if rng.random() < 0.5:
        half = rng.uniform(0.1, 0.3, 2) * fig.height_px
        quad = anchor + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        draw_shape(img, label, value, ("poly", colour, quad))
        draw_shape(img, label, value, ("line", colour * 0.6, quad[0], quad[2], 1.0))
    else:
        lean = rng.normal(0, 0.15)
        span = np.array([math.sin(lean), math.cos(lean)]) * rng.uniform(0.6, 2.0) * fig.height_px
        r = rng.uniform(0.025, 0.08) * fig.height_px
        draw_shape(img, label, value, ("capsule", colour, anchor - span / 2, anchor + span / 2, r, r))


def _photometric(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness/contrast, optional Gaussian blur and pixel noise; strength 0 returns the image unchanged."""
    alpha, beta = 1 + rng.uniform(-0.25, 0.25) * strength, rng.uniform(-25, 25) * strength
    blur, sigma_blur = rng.random() < 0.3 * strength, rng.uniform(0.5, 1.2)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(0, 6) * strength)
    if strength == 0:
        return img.copy()
    out = img.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    if blur:
        out = cv2.GaussianBlur(out, (0, 0), sigma_blur)
    out += noise
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _keypoints(fig: Figure, own: np.ndarray, label: np.ndarray, layer: int) -> np.ndarray:
    """(17, 3) [x, y, v]: v=2 seen, v=1 covered (by a nearer part, another person, an occluder or the head),
    v=0 with (0, 0) outside the image or an eye/nose on the far side of the head (not labelled, as in COCO)."""
    h, w = label.shape
    k = fig.kpts_img
    inside = (k[:, 0] >= 0) & (k[:, 0] <= w - 1) & (k[:, 1] >= 0) & (k[:, 1] <= h - 1)
    ix = np.clip(np.round(k[:, 0]).astype(np.int64), 0, w - 1)
    iy = np.clip(np.round(k[:, 1]).astype(np.int64), 0, h - 1)
    lab = label[iy, ix]
    seen = (lab == 0) | ((lab > layer * LABELS_PER_LAYER) & (lab <= own))
    v = np.where(seen & ~fig.face_hidden, 2, 1)
    v[~inside | (fig.face_hidden & (np.arange(17) < 3))] = 0
    out = np.zeros((17, 3))
    out[v > 0, :2] = k[v > 0]
    out[:, 2] = v
    return out


def _person_box(label: np.ndarray, layer: int, kpts: np.ndarray) -> tuple[list[float], int] | None:
    """Box [x, y, w, h] around the visible silhouette and the v>0 joints plus a margin; None if none is visible."""
    h, w = label.shape
    lo = layer * LABELS_PER_LAYER
    ys, xs = np.nonzero((label > lo) & (label < lo + LABELS_PER_LAYER))
    labelled = kpts[kpts[:, 2] > 0, :2]
    if len(xs) == 0:
        return None
    x0 = min(float(xs.min()), *labelled[:, 0]) if len(labelled) else float(xs.min())
    x1 = max(float(xs.max()), *labelled[:, 0]) if len(labelled) else float(xs.max())
    y0 = min(float(ys.min()), *labelled[:, 1]) if len(labelled) else float(ys.min())
    y1 = max(float(ys.max()), *labelled[:, 1]) if len(labelled) else float(ys.max())
    m = max(2.0, 0.03 * max(x1 - x0, y1 - y0))
    x0, y0, x1, y1 = max(0.0, x0 - m), max(0.0, y0 - m), min(w - 1.0, x1 + m), min(h - 1.0, y1 + m)
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], len(xs)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes [x, y, w, h] (image px)."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / max(a[2] * a[3] + b[2] * b[3] - inter, 1e-9)


def _detections(rng: np.random.Generator, boxes: list[list[float]], w: int, h: int) -> list[dict]:
    """One jittered box per GT box (IoU ~0.7-0.95, score 0.5-1 rising with IoU) plus a few low-score false
    positives, as a person detector would give."""
    dets = []
    for gt in boxes:
        g = np.asarray(gt, dtype=np.float64)
        sigma = rng.uniform(0.03, 0.12)
        for _ in range(20):
            d = rng.normal(0, sigma, 4) * g[[2, 3, 2, 3]]
            x0, y0 = np.clip(g[0] + d[0], 0, w - 1), np.clip(g[1] + d[1], 0, h - 1)
            x1, y1 = np.clip(g[0] + g[2] + d[2], x0 + 1, w - 1), np.clip(g[1] + g[3] + d[3], y0 + 1, h - 1)
            box = np.array([x0, y0, max(x1 - x0, 1.0), max(y1 - y0, 1.0)])
            iou = box_iou(box, g)
            if 0.7 <= iou <= 0.95:
                break
        score = float(np.clip(0.5 + 0.5 * (iou - 0.7) / 0.25 + rng.normal(0, 0.05), 0.5, 1.0))
        dets.append({"bbox": [round(float(x), 2) for x in box], "score": round(score, 4)})
    for _ in range(rng.poisson(0.5)):
        bw = rng.uniform(10, 0.3 * w)
        bh = min(bw * rng.uniform(1.2, 2.5), h - 1.0)
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        box = [round(float(v), 2) for v in (x0, y0, bw, bh)]
        dets.append({"bbox": box, "score": round(float(rng.uniform(0.05, 0.45)), 4)})
    return dets


def render_scene(ss: np.random.SeedSequence, image_size: tuple[int, int], knobs: SceneKnobs) -> Scene:
    """Render one image with its labels; deterministic in `ss`.

    Args:
        ss: the image's seed sequence; its first child seeds the background (see `render_background`).
        image_size: (W, H) px.
    """
    bg_ss, people_ss, photo_ss, det_ss = ss.spawn(4)
    w, h = image_size
    img = render_background(bg_ss, image_size, knobs.clutter)
    label = np.zeros((h, w), dtype=np.int32)
    rng = np.random.default_rng(people_ss)
    figures: list[tuple[Figure, np.ndarray, int]] = []
    layer = 0
    lo, hi = knobs.person_height
    for _ in range(int(rng.integers(1, knobs.max_people + 1))):
        height = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        if figures and rng.random() < 0.5:  # overlap a previous person
            prev = figures[int(rng.integers(len(figures)))][0]
            centre = prev.kpts_img.mean(0) + rng.normal(0, 0.3, 2) * max(height, prev.height_px)
        else:
            centre = rng.uniform((0.1 * w, 0.2 * h), (0.9 * w, 0.8 * h))
        fig = sample_figure(rng, (float(centre[0]), float(centre[1])), height)
        layer += 1
        figures.append((fig, render_figure(img, label, fig, layer), layer))
        if rng.random() < knobs.occluders:
            layer += 1
            _draw_occluder(img, label, layer * LABELS_PER_LAYER + 1, rng, fig)
    persons = []
    for fig, own, lay in figures:
        kpts = _keypoints(fig, own, label, lay)
        box = _person_box(label, lay, kpts)
        if box is None:
            continue
        persons.append({
            "keypoints": kpts, "bbox": box[0], "area": float(box[1]), "num_keypoints": int((kpts[:, 2] > 0).sum()),
            "facing": fig.facing, "pose": fig.pose, "layer": lay,
        })  # fmt: skip
    img = _photometric(img, np.random.default_rng(photo_ss), knobs.photometric)
    dets = _detections(np.random.default_rng(det_ss), [p["bbox"] for p in persons], w, h)
    return Scene(img, label, persons, dets)
