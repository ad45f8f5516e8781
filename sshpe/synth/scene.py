"""One synthetic image for `sshpe synth`: a floor and a cluttered wall, 1-N people standing on the ground plane
(nearer ones larger, lower and drawn over farther ones, truncated at the image border), objects in front of them,
photometric variation, and the COCO keypoint labels and simulated person detections that go with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from sshpe.synth.figures import (
    JOINT_NAMES,
    LABELS_PER_LAYER,
    Figure,
    choice_cdf,
    choose,
    draw_shape,
    render_figure,
    sample_figure,
)

NUM_COCO = 17
_OCCLUDERS, _OCCLUDER_CDF = ("counter", "crate", "pole"), choice_cdf((0.4, 0.35, 0.25))


@dataclass(frozen=True)
class SceneKnobs:
    """Difficulty knobs (see `sshpe.synth.generate` for their meaning)."""

    clutter: float = 0.5
    occluders: float = 0.2
    max_people: int = 4
    person_height: tuple[float, float] = (0.3, 1.0)
    photometric: float = 0.5


@dataclass
class Scene:
    """A rendered image and its labels.

    Attributes:
        img: (H, W, 3) uint8 BGR, after photometric variation (before JPEG).
        label: (H, W) int32 part labels: 0 background, else layer * LABELS_PER_LAYER + part rank + 1.
        persons: per kept person: keypoints (17, 3) float [x, y, v] image px, extra_joints {name: [x, y, v]}
            (MPII/AIC joints COCO lacks), head_box [x1, y1, x2, y2], bbox [x, y, w, h], area (visible silhouette
            pixel count), num_keypoints, facing, pose, layer.
        detections: simulated detector output: bbox [x, y, w, h] image px and score in (0, 1].
    """

    img: np.ndarray
    label: np.ndarray
    persons: list[dict]
    detections: list[dict]


def render_background(ss: np.random.SeedSequence, image_size: tuple[int, int], clutter: float,
                      horizon: float | None = None) -> np.ndarray:  # fmt: skip
    """A wall (gradient, low-frequency texture, shapes) above a floor (another gradient) meeting at `horizon`.

    Args:
        ss: the background's own seed sequence (so it can be re-rendered without people).
        image_size: (W, H) px.
        clutter: scales the number of shapes on the wall (0 = gradients and texture only).
        horizon: y of the wall/floor line in px; None = no floor.

    Returns:
        (H, W, 3) uint8 BGR.
    """
    rng = np.random.default_rng(ss)
    w, h = image_size
    wall = _surface_grid(rng, w, h)
    if horizon is not None and horizon < h:  # the floor below the wall: only the wall rows above it are upsampled
        row = int(max(0, horizon))
        img = upsample_rows(_surface_grid(rng, w, h), w, h, h)
        img[:row] = upsample_rows(wall, w, h, row)
    else:
        img = upsample_rows(wall, w, h, h)
    top = int(min(h, horizon)) if horizon is not None else h
    for _ in range(rng.poisson(10 * clutter)):
        _draw_clutter(img, rng, w, max(top, 8))
    return img


def _surface_grid(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """(h // 16 + 2, w // 16 + 2, 3) uint8: a linear colour ramp in a random direction plus low-frequency texture on
    a 16-px grid; `upsample_rows` makes it a (h, w) surface (cubic interpolation keeps the ramp linear)."""
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    gw, gh = w // 16 + 2, h // 16 + 2
    xs, ys = np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32)
    t = xs[None, :] * math.cos(ang) + ys[:, None] * math.sin(ang)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    small = c0 + (c1 - c0) * t[..., None]
    small += rng.standard_normal((gh, gw, 3), dtype=np.float32) * np.float32(rng.uniform(5, 25))
    return np.clip(small, 0, 255).astype(np.uint8)


def upsample_rows(small: np.ndarray, w: int, h: int, rows: int) -> np.ndarray:
    """The top `rows` rows of `cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)`, (rows, w, 3), exactly.

    When a top slice of `small` keeps the vertical scale exactly (its height times h / small height is a whole
    number of rows), only that slice is resized: the same scale gives the same source position and weights for
    every output row, and the slice keeps a margin of source rows below the last output row's cubic taps.
    """
    gh = small.shape[0]
    last_tap = math.floor((rows - 0.5) * gh / h - 0.5) + 2  # the lowest source row output row rows - 1 reads
    for keep in range(last_tap + 3, gh):  # 2 rows of margin beyond the taps' reach
        if keep * h % gh == 0:
            return cv2.resize(small[:keep], (w, keep * h // gh), interpolation=cv2.INTER_CUBIC)[:rows]
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[:rows]


def _draw_clutter(img: np.ndarray, rng: np.random.Generator, w: int, h: int) -> None:
    """One random rectangle, ellipse, line or stroke (1-3 connected tapered capsules) in the top `h` rows."""
    colour = rng.uniform(0, 255, 3)
    kind = rng.integers(4)
    p = rng.uniform((0, 0), (w, h))
    size = rng.uniform(5, max(5.0, 0.3 * min(w, h)))
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
    """An object in front of `fig`: a counter across its legs, a crate or bag near a joint, or a pole."""
    colour = rng.uniform(0, 255, 3)
    h_px = fig.height_px
    kind = choose(rng, _OCCLUDERS, _OCCLUDER_CDF)
    k = fig.kpts_img
    if kind == "counter":  # a table/counter/railing: a band from somewhere between hips and knees downward
        hips, knees = k[11:13, 1].mean(), k[13:15, 1].mean()
        top = float(rng.uniform(min(hips, knees), max(hips, knees) + 0.05 * h_px))
        x0 = k[:17, 0].min() - rng.uniform(0.1, 0.6) * h_px
        x1 = k[:17, 0].max() + rng.uniform(0.1, 0.6) * h_px
        bottom = top + rng.uniform(0.3, 0.6) * h_px
        quad = np.array([[x0, top], [x1, top], [x1, bottom], [x0, bottom]])
        draw_shape(img, label, value, ("poly", colour * 0.75, quad))
        lit_top = quad.copy()
        lit_top[2:, 1] = top + 0.15 * (bottom - top)
        draw_shape(img, label, value, ("~poly", colour, lit_top))
    elif kind == "crate":
        anchor = k[rng.integers(NUM_COCO)] + rng.normal(0, 0.08 * h_px, 2)
        half = rng.uniform(0.08, 0.22, 2) * h_px
        quad = anchor + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        draw_shape(img, label, value, ("poly", colour, quad))
        draw_shape(img, label, value, ("~poly", colour * 0.7, anchor + np.array([[-1, 0.3], [1, 0.3], [1, 1],
                                                                                [-1, 1]]) * half))  # fmt: skip
    else:
        anchor = k[rng.integers(NUM_COCO)] + rng.normal(0, 0.1 * h_px, 2)
        lean = rng.normal(0, 0.1)
        span = np.array([math.sin(lean), math.cos(lean)]) * rng.uniform(0.8, 2.0) * h_px
        r = rng.uniform(0.02, 0.05) * h_px
        draw_shape(img, label, value, ("capsule", colour * 0.7, anchor - span / 2, anchor + span / 2, r, r))
        draw_shape(img, label, value, ("~capsule", colour, anchor - span / 2, anchor + span / 2, 0.5 * r, 0.5 * r))


def _photometric(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness/contrast, optional Gaussian blur and pixel noise; strength 0 returns the image unchanged."""
    alpha, beta = 1 + rng.uniform(-0.2, 0.2) * strength, rng.uniform(-20, 20) * strength
    blur, sigma_blur = rng.random() < 0.25 * strength, rng.uniform(0.5, 1.0)
    tile = np.round(rng.standard_normal((64, 64, 3)) * rng.uniform(0, 5) * strength).astype(np.int16)
    dy, dx = rng.integers(64, size=2)
    if strength == 0:
        return img.copy()
    out = cv2.GaussianBlur(img, (0, 0), sigma_blur) if blur else img
    out = cv2.addWeighted(out, alpha, out, 0.0, beta, dtype=cv2.CV_16S)  # alpha * img + beta, rounded
    h, w = img.shape[:2]  # pixel noise from a 64-px tile at a random offset (its period is invisible at this std)
    strip = np.tile(tile[(np.arange(64) + dy) % 64], (1, (dx + w + 63) // 64, 1))[:, dx : dx + w]  # rows y0 + 0..63
    res = np.empty_like(img)
    for y0 in range(0, h, 64):  # noise[y, x] = tile[(y + dy) % 64, (x + dx) % 64], one 64-row band at a time
        band = slice(y0, min(h, y0 + 64))
        cv2.add(out[band], strip[: band.stop - y0], dst=res[band], dtype=cv2.CV_8U)  # saturating: clipped to 0-255
    return res


def _keypoints(fig: Figure, own: np.ndarray, label: np.ndarray, layer: int) -> np.ndarray:
    """(21, 3) [x, y, v] in JOINT_NAMES order: v=2 seen, v=1 covered (by a nearer part, another person, an object
    or the head), v=0 with (0, 0) outside the image or an eye/nose/ear on the far side of the head (not labelled,
    as in COCO)."""
    h, w = label.shape
    k = fig.kpts_img
    inside = (k[:, 0] >= 0) & (k[:, 0] <= w - 1) & (k[:, 1] >= 0) & (k[:, 1] <= h - 1)
    ix = np.clip(np.round(k[:, 0]).astype(np.int64), 0, w - 1)
    iy = np.clip(np.round(k[:, 1]).astype(np.int64), 0, h - 1)
    lab = label[iy, ix]
    seen = (lab == 0) | ((lab > layer * LABELS_PER_LAYER) & (lab <= own))
    v = np.where(seen & ~fig.face_hidden, 2, 1)
    v[~inside | fig.face_hidden] = 0
    out = np.zeros((len(JOINT_NAMES), 3))
    out[v > 0, :2] = k[v > 0]
    out[:, 2] = v
    return out


def _person_box(label: np.ndarray, layer: int, fig: Figure) -> tuple[list[float], int] | None:
    """Box [x, y, w, h] tight around the visible silhouette plus a 1-px margin (as COCO's boxes enclose the
    segmentation; covered joints may lie outside it), and the silhouette's pixel count; None if nothing of the
    person is visible."""
    h, w = label.shape
    lo = layer * LABELS_PER_LAYER
    pad = 0.2 * fig.height_px  # every drawn part lies within this of a joint
    x0 = int(np.clip(fig.kpts_img[:, 0].min() - pad, 0, w))
    y0 = int(np.clip(fig.kpts_img[:, 1].min() - pad, 0, h))
    x1 = int(np.clip(fig.kpts_img[:, 0].max() + pad + 1, 0, w))
    y1 = int(np.clip(fig.kpts_img[:, 1].max() + pad + 1, 0, h))
    roi = label[y0:y1, x0:x1]
    if roi.size == 0:
        return None
    mask = cv2.inRange(roi, lo + 1, lo + LABELS_PER_LAYER - 1)  # this person's part labels (bounds inclusive)
    count = cv2.countNonZero(mask)
    if count == 0:
        return None
    bx, by, bw, bh = cv2.boundingRect(mask)  # of the non-zero pixels
    x0, x1, y0, y1 = float(x0 + bx), float(x0 + bx + bw - 1), float(y0 + by), float(y0 + by + bh - 1)
    x0, y0, x1, y1 = max(0.0, x0 - 1), max(0.0, y0 - 1), min(w - 1.0, x1 + 1), min(h - 1.0, y1 + 1)
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], count


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


def _place_people(rng: np.random.Generator, image_size: tuple[int, int], knobs: SceneKnobs) -> tuple[float, list]:
    """Horizon and (feet x, feet y, standing height) per person, far to near.

    People stand on one ground plane seen by a camera at a per-image height: a person of height H has the feet
    `c * H` below the horizon (c = camera height / person height), so nearer people are larger and lower, and the
    nearest run off the bottom edge. Some join an earlier person's side (groups that overlap).
    """
    w, h = image_size
    lo, hi = knobs.person_height
    n = int(rng.integers(1, knobs.max_people + 1))
    heights = sorted(h * math.exp(rng.uniform(math.log(lo), math.log(hi))) for _ in range(n))
    cam = rng.uniform(0.55, 0.95)
    horizon = rng.uniform(0.1, 0.5) * h
    people: list[tuple[float, float, float]] = []
    for height in heights:
        if people and rng.random() < 0.45:  # stand next to someone already placed
            px, _, ph = people[int(rng.integers(len(people)))]
            x = px + rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.4) * max(height, ph)
        else:
            x = rng.uniform(0.0, 1.0) * w
        feet = horizon + cam * height * rng.uniform(0.92, 1.08)
        people.append((float(x), float(feet), float(height)))
    return horizon, people


def render_scene(ss: np.random.SeedSequence, image_size: tuple[int, int], knobs: SceneKnobs) -> Scene:
    """Render one image with its labels; deterministic in `ss`.

    Args:
        ss: the image's seed sequence; its first child seeds the background (see `render_background`).
        image_size: (W, H) px.
    """
    bg_ss, people_ss, photo_ss, det_ss = ss.spawn(4)
    w, h = image_size
    rng = np.random.default_rng(people_ss)
    horizon, placed = _place_people(rng, image_size, knobs)
    img = render_background(bg_ss, image_size, knobs.clutter, horizon)
    label = np.zeros((h, w), dtype=np.int32)
    figures: list[tuple[Figure, np.ndarray, int]] = []
    layer = 0
    for x, feet, height in placed:
        fig = sample_figure(rng, (x, feet), height, anchor="feet")
        layer += 1
        figures.append((fig, render_figure(img, label, fig, layer), layer))
        if rng.random() < knobs.occluders:
            layer += 1
            _draw_occluder(img, label, layer * LABELS_PER_LAYER + 1, rng, fig)
    persons = []
    for fig, own, lay in figures:
        joints = _keypoints(fig, own, label, lay)
        kpts = joints[:NUM_COCO]
        box = _person_box(label, lay, fig)
        if box is None:
            continue
        extra = {name: [round(float(v), 4) for v in joints[i]] for i, name in enumerate(JOINT_NAMES) if i >= NUM_COCO}
        persons.append({
            "keypoints": kpts, "extra_joints": extra, "head_box": [round(float(v), 2) for v in fig.head_box],
            "bbox": box[0], "area": float(box[1]), "num_keypoints": int((kpts[:, 2] > 0).sum()),
            "facing": fig.facing, "pose": fig.pose, "layer": lay,
        })  # fmt: skip
    img = _photometric(img, np.random.default_rng(photo_ss), knobs.photometric)
    dets = _detections(np.random.default_rng(det_ss), [p["bbox"] for p in persons], w, h)
    return Scene(img, label, persons, dets)
