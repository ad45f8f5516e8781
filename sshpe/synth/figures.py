"""Synthetic people for `sshpe synth`: a pseudo-3D kinematic model of the 17 COCO joints, a pose sampler, and a
renderer that paints one figure into a colour image and a part-label map at exactly the joint centres it reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from sshpe.schema import COCO_NAMES

FACINGS = ("front", "back", "left", "right")
# Yaw of the body about the vertical axis (degrees). "left" = the person's left side faces the camera.
_FACING_YAW = {"front": 0.0, "back": 180.0, "left": -90.0, "right": 90.0}
_FACING_P = (0.35, 0.25, 0.2, 0.2)
POSES = ("standing", "walking", "arms_raised", "crouching", "sitting", "free")
_POSE_P = (0.25, 0.25, 0.15, 0.1, 0.1, 0.15)

SHIFT = 4  # cv2 fixed-point bits: every drawn coordinate is a multiple of 1/16 px
_ONE = 1 << SHIFT
LABELS_PER_LAYER = 64  # label map value = layer * LABELS_PER_LAYER + part rank + 1

# Limb lengths and widths as fractions of the standing height (jittered per person).
_LENGTHS = {
    "head_r": 0.062, "neck": 0.035, "torso": 0.29, "shoulder_w": 0.22, "hip_w": 0.15, "torso_depth": 0.12,
    "upper_arm": 0.165, "forearm": 0.15, "thigh": 0.235, "shin": 0.225, "foot": 0.07,
}  # fmt: skip
_WIDTHS = {"upper_arm": 0.055, "forearm": 0.042, "thigh": 0.08, "shin": 0.058, "hand": 0.032, "neck": 0.05}
_SKIN = np.array([[60, 80, 110], [90, 130, 180], [120, 160, 210], [150, 190, 230], [40, 60, 90]], float)
# A face point is hidden by the head when it lies this far (in head radii) behind the head centre; the nose
# protrudes, so it stays visible slightly past a true profile.
_FACE_HIDE = {"nose": 0.45, "left_eye": 0.2, "right_eye": 0.2, "left_ear": 0.2, "right_ear": 0.2}
_HAIR = np.array([[20, 20, 25], [30, 50, 80], [60, 110, 160], [150, 150, 150], [20, 40, 120]], float)

Points = dict[str, np.ndarray]  # name -> (2,) image px or (3,) body units
Depths = dict[str, float]  # name -> depth toward the camera, units of standing height
Sizes = dict[str, float]
Colours = dict[str, np.ndarray]  # name -> (3,) BGR
Shape = tuple  # (kind, colour, *geometry in image px), see draw_shape
Part = tuple[float, tuple[int, ...], list[Shape]]  # (depth, owned COCO joint indices, shapes)


@dataclass
class Figure:
    """One sampled person, already placed in the image.

    Attributes:
        facing: one of FACINGS (the nearest of front/back/left/right to the sampled yaw).
        pose: one of POSES.
        height_px: standing height in image px.
        kpts_img: (17, 2) COCO-17 joint centres, image px (pixel centres at integers), multiples of 1/16 px.
        face_hidden: (17,) True for face points on the far side of the head (hidden by the head itself).
        parts: drawables, far to near; each is (depth, owned joint indices, shapes).
    """

    facing: str
    pose: str
    height_px: float
    kpts_img: np.ndarray
    face_hidden: np.ndarray
    parts: list[Part] = field(default_factory=list)


def sample_pose(rng: np.random.Generator, kind: str) -> dict[str, np.ndarray]:
    """Joint angles in degrees for one pose family; limb arrays are (2,) = (left, right).

    Swing rotates a limb forward in the sagittal plane (0 = hanging down), abduction outward in the frontal plane,
    elbow flex bends the forearm forward, knee flex bends the shin backward.
    """
    u, n = rng.uniform, rng.normal
    arm_swing, arm_abd, elbow = n(0, 10, 2), u(5, 25, 2), u(0, 25, 2)
    leg_swing, leg_abd, knee, lean = n(0, 5, 2), u(0, 10, 2), u(0, 10, 2), n(0, 5)
    if kind == "walking":
        leg_swing = np.array([1.0, -1.0]) * u(15, 35) * rng.choice([-1.0, 1.0]) + n(0, 4, 2)
        arm_swing, arm_abd, elbow = -leg_swing * u(0.6, 1.0), u(5, 15, 2), u(10, 45, 2)
        leg_abd, knee, lean = u(0, 6, 2), np.where(leg_swing < 0, u(15, 45, 2), u(0, 15, 2)), u(0, 10)
    elif kind == "arms_raised":
        raised = rng.random(2) < np.array([0.8, 0.8]) if rng.random() < 0.6 else np.eye(2, dtype=bool)[rng.integers(2)]
        arm_abd = np.where(raised, u(100, 175, 2), arm_abd)
        elbow = np.where(raised, u(0, 70, 2), elbow)
    elif kind == "crouching":
        leg_swing, knee, lean = u(70, 110, 2), u(100, 140, 2), u(20, 45)
        arm_swing, elbow, leg_abd = u(20, 70, 2), u(20, 80, 2), u(5, 25, 2)
    elif kind == "sitting":
        leg_swing, knee, lean = u(75, 100, 2), u(70, 100, 2), u(-5, 15)
        arm_swing, elbow = u(10, 50, 2), u(40, 90, 2)
    elif kind == "free":
        arm_swing, arm_abd, elbow = u(-60, 120, 2), u(0, 150, 2), u(0, 120, 2)
        leg_swing, leg_abd, knee, lean = u(-30, 80, 2), u(0, 40, 2), u(0, 90, 2), u(-10, 30)
    return {
        "arm_swing": arm_swing, "arm_abd": arm_abd, "elbow": elbow, "leg_swing": leg_swing,
        "leg_abd": leg_abd, "knee": knee, "lean": np.float64(lean), "bend": np.float64(n(0, 4)),
    }  # fmt: skip


def _limb_dir(swing_deg: float, abd_deg: float, side: float) -> np.ndarray:
    """Unit 3D direction (x = person's left, y = down, z = forward) of a limb with the given angles."""
    s, a = math.radians(swing_deg), math.radians(abd_deg)
    return np.array([side * math.sin(a), math.cos(a) * math.cos(s), math.cos(a) * math.sin(s)])


def pose_to_points(length: Sizes, pose: dict[str, np.ndarray]) -> Points:
    """3D points of the body in units of standing height (x = person's left, y = down, z = forward).

    Returns named (3,) points: the 17 COCO joints by name plus neck, pelvis, head, hair, hand/toe ends.
    """
    lean, bend = math.radians(float(pose["lean"])), math.radians(float(pose["bend"]))
    up = np.array([math.sin(bend), -math.cos(bend) * math.cos(lean), math.cos(bend) * math.sin(lean)])
    pelvis = np.zeros(3)
    neck = pelvis + length["torso"] * up
    head = neck + (length["neck"] + length["head_r"]) * up
    r = length["head_r"]
    pts = {"pelvis": pelvis, "neck": neck, "head": head, "hair": head + r * np.array([0.0, -0.25, -0.4])}
    pts["nose"] = head + r * np.array([0.0, 0.15, 1.15])
    for name, side in (("left", 1.0), ("right", -1.0)):
        i = 0 if side > 0 else 1
        pts[f"{name}_eye"] = head + r * np.array([0.38 * side, -0.15, 0.8])
        pts[f"{name}_ear"] = head + r * np.array([0.95 * side, 0.0, 0.0])
        sho = neck + np.array([side * length["shoulder_w"] / 2, 0.03, 0.0])
        arm = _limb_dir(pose["arm_swing"][i], pose["arm_abd"][i], side)
        fore = _limb_dir(pose["arm_swing"][i] + pose["elbow"][i], pose["arm_abd"][i], side)
        pts[f"{name}_shoulder"], pts[f"{name}_elbow"] = sho, sho + length["upper_arm"] * arm
        pts[f"{name}_wrist"] = pts[f"{name}_elbow"] + length["forearm"] * fore
        pts[f"{name}_hand"] = pts[f"{name}_wrist"] + 0.045 * fore
        hip = pelvis + np.array([side * length["hip_w"] / 2, 0.0, 0.0])
        thigh = _limb_dir(pose["leg_swing"][i], pose["leg_abd"][i], side)
        shin = _limb_dir(pose["leg_swing"][i] - pose["knee"][i], pose["leg_abd"][i], side)
        pts[f"{name}_hip"], pts[f"{name}_knee"] = hip, hip + length["thigh"] * thigh
        pts[f"{name}_ankle"] = pts[f"{name}_knee"] + length["shin"] * shin
        pts[f"{name}_toe"] = pts[f"{name}_ankle"] + np.array([0.0, 0.02, length["foot"]])
    return pts


def _colours(rng: np.random.Generator) -> Colours:
    """Per-person BGR colours: skin, hair, shirt, sleeves, trousers, shins, shoes, accessories."""
    skin = _SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 8, 3)
    shirt, pants = rng.uniform(20, 235, 3), rng.uniform(20, 200, 3)
    return {
        "skin": skin, "hair": _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 8, 3), "shirt": shirt,
        "forearm": skin if rng.random() < 0.4 else shirt * rng.uniform(0.9, 1.1),
        "thigh": pants, "shin": skin if rng.random() < 0.25 else pants, "shoe": rng.uniform(10, 120, 3),
        "watch": rng.uniform(0, 255, 3), "strap": rng.uniform(0, 120, 3), "eye": rng.uniform(0, 40, 3),
    }  # fmt: skip


def sample_figure(
    rng: np.random.Generator, center_img: tuple[float, float], height_px: float, facing: str | None = None
) -> Figure:
    """Sample body proportions, pose, facing, tilt and colours, and place the figure's extent centre.

    Args:
        center_img: where the centre of the figure's extent lands, image px.
        height_px: standing height, image px.
        facing: force a facing (one of FACINGS); sampled when None.
    """
    facing = facing or str(rng.choice(FACINGS, p=_FACING_P))
    pose_kind = str(rng.choice(POSES, p=_POSE_P))
    length = {k: v * math.exp(rng.normal(0, 0.08)) for k, v in _LENGTHS.items()}
    width = {k: v * math.exp(rng.normal(0, 0.12)) * height_px for k, v in _WIDTHS.items()}
    pts3 = pose_to_points(length, sample_pose(rng, pose_kind))
    yaw = math.radians(_FACING_YAW[facing] + rng.normal(0, 15))
    tilt = math.radians(float(np.clip(rng.normal(0, 10), -35, 35)))
    aspect = rng.uniform(0.85, 1.15)
    names = list(pts3)
    xyz = np.stack([pts3[k] for k in names])
    u = xyz[:, 0] * math.cos(yaw) + xyz[:, 2] * math.sin(yaw)
    depth = -xyz[:, 0] * math.sin(yaw) + xyz[:, 2] * math.cos(yaw)
    rot = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
    uv = np.stack([u * aspect, xyz[:, 1]], 1) @ rot.T * height_px
    uv += np.asarray(center_img) - (uv.min(0) + uv.max(0)) / 2
    uv = np.round(uv * _ONE) / _ONE  # exactly what cv2 draws with shift=SHIFT
    p2 = dict(zip(names, uv))
    dz = dict(zip(names, depth))
    kpts = np.stack([p2[k] for k in COCO_NAMES])
    head_r = length["head_r"]
    face_hidden = np.array([_face_hidden(dz, k, head_r) for k in COCO_NAMES])
    parts = _build_parts(rng, p2, dz, length, width, height_px, _colours(rng))
    return Figure(facing, pose_kind, float(height_px), kpts, face_hidden, parts)


def _face_hidden(dz: Depths, name: str, head_r: float) -> bool:
    """Whether face point `name` is on the far side of the head (False for body joints)."""
    return name in _FACE_HIDE and dz[name] < dz["head"] - _FACE_HIDE[name] * head_r


def _build_parts(
    rng: np.random.Generator, p2: Points, dz: Depths, length: Sizes, width: Sizes, height_px: float, col: Colours
) -> list[Part]:
    """Drawables (depth, owned COCO joint indices, shapes) sorted far to near; shapes carry BGR colours."""
    parts = _limb_parts(rng, "left", rng.uniform(0.72, 0.88), p2, dz, width, col)  # the left limbs are darker
    parts += _limb_parts(rng, "right", 1.0, p2, dz, width, col)
    torso = _torso(rng, p2, dz, length, width, height_px, col)
    head = _head(p2, dz, length["head_r"], height_px, col)
    parts += [torso, (max(head[0], torso[0]) + 0.01, head[1], head[2])]  # the head is never behind the neck
    parts.sort(key=lambda part: part[0])
    return parts


def _limb_parts(
    rng: np.random.Generator, side: str, shade: float, p2: Points, dz: Depths, width: Sizes, col: Colours
) -> list[Part]:
    """Upper arm, forearm (+ a watch on the left wrist), hand, thigh, shin and shoe of one side."""
    o = 0 if side == "left" else 1
    sh, el, wr, hip, kn, an = 5 + o, 7 + o, 9 + o, 11 + o, 13 + o, 15 + o
    p = {k: p2[f"{side}_{k}"] for k in ("shoulder", "elbow", "wrist", "hand", "hip", "knee", "ankle", "toe")}
    z = {k: dz[f"{side}_{k}"] for k in p}
    wa, wf, wt, ws, wh = (width[k] / 2 for k in ("upper_arm", "forearm", "thigh", "shin", "hand"))
    forearm = [("capsule", col["forearm"] * shade, p["elbow"], p["wrist"], wf, wf * 0.8)]
    if side == "left" and rng.random() < 0.7:  # a watch: a side-specific cue
        band = p["elbow"] + 0.85 * (p["wrist"] - p["elbow"])
        forearm.append(("circle", col["watch"], band, wf * 1.05))
    # Legs sit slightly behind arms at equal depth; the hand and foot are drawn over their limb.
    return [
        ((z["shoulder"] + z["elbow"]) / 2, (sh, el),
         [("capsule", col["shirt"] * shade, p["shoulder"], p["elbow"], wa, wa * 0.85)]),
        ((z["elbow"] + z["wrist"]) / 2, (el, wr), forearm),
        ((z["wrist"] + z["hand"]) / 2 + 1e-3, (wr,),
         [("capsule", col["skin"] * shade, p["wrist"], p["hand"], wh, wh)]),
        ((z["hip"] + z["knee"]) / 2 - 0.01, (hip, kn),
         [("capsule", col["thigh"] * shade, p["hip"], p["knee"], wt, wt * 0.8)]),
        ((z["knee"] + z["ankle"]) / 2 - 0.01, (kn, an),
         [("capsule", col["shin"] * shade, p["knee"], p["ankle"], ws, ws * 0.75)]),
        ((z["ankle"] + z["toe"]) / 2 - 0.005, (an,),
         [("capsule", col["shoe"] * shade, p["ankle"], p["toe"], ws * 0.8, ws * 0.6)]),
    ]  # fmt: skip


def _torso(
    rng: np.random.Generator, p2: Points, dz: Depths, length: Sizes, width: Sizes, height_px: float, col: Colours
) -> Part:
    """The torso polygon plus a capsule for its depth (visible in profile) and an optional bag strap."""
    quad = np.stack([p2["left_shoulder"], p2["right_shoulder"], p2["right_hip"], p2["left_hip"]])
    sin_yaw = min(1.0, abs(dz["left_hip"] - dz["right_hip"]) / length["hip_w"])
    side_w = length["torso_depth"] * height_px * sin_yaw  # the torso's depth, seen in profile
    mid_sh = (p2["left_shoulder"] + p2["right_shoulder"]) / 2
    mid_hip = (p2["left_hip"] + p2["right_hip"]) / 2
    shapes: list[Shape] = [
        ("capsule", col["skin"], p2["neck"], p2["head"], width["neck"] / 2, width["neck"] / 2),
        ("poly", col["shirt"], quad),
        ("capsule", col["shirt"], mid_sh, mid_hip, max(side_w / 2, 1.0), max(side_w / 2, 1.0)),
        ("capsule", col["thigh"], p2["left_hip"], p2["right_hip"], width["thigh"] / 2, width["thigh"] / 2),
    ]
    if rng.random() < 0.4:  # a bag strap from the left shoulder to the right hip
        shapes.append(("line", col["strap"], p2["left_shoulder"], p2["right_hip"], max(1.0, 0.012 * height_px)))
    torso_z = float(np.mean([dz[k] for k in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")]))
    eps = 0.5 * length["shoulder_w"] / 2  # a joint this far behind the torso centre is hidden by the torso
    owned = tuple(
        j
        for j, k in ((5, "left_shoulder"), (6, "right_shoulder"), (11, "left_hip"), (12, "right_hip"))
        if dz[k] >= torso_z - eps
    )
    return (torso_z - 0.02, owned, shapes)


def _head(p2: Points, dz: Depths, head_r: float, height_px: float, col: Colours) -> Part:
    """Skin ellipse, hair ellipse (behind or in front by depth), ears, and eyes/nose on the visible side."""
    head, hair, r = p2["head"], p2["hair"], head_r * height_px
    skin = ("ellipse", col["skin"], head, (0.85 * r, r))
    hair_shape = ("ellipse", col["hair"], hair, (0.95 * r, 0.9 * r))
    shapes = [skin, hair_shape] if dz["hair"] > dz["head"] else [hair_shape, skin]
    for ear in ("left_ear", "right_ear"):
        if not _face_hidden(dz, ear, head_r):
            shapes.append(("ellipse", col["skin"] * 0.9, p2[ear], (0.25 * r, 0.35 * r)))
    if dz["hair"] > dz["head"]:  # back view: the hair covers the ears' inner halves again
        shapes.append(("ellipse", col["hair"], hair, (0.8 * r, 0.8 * r)))
    for eye in ("left_eye", "right_eye"):
        if not _face_hidden(dz, eye, head_r):
            shapes.append(("circle", col["eye"], p2[eye], max(0.6, 0.16 * r)))
    if not _face_hidden(dz, "nose", head_r):
        shapes.append(("circle", col["skin"] * 0.75, p2["nose"], max(0.6, 0.18 * r)))
    return (float(dz["head"]), (0, 1, 2, 3, 4), shapes)


def _fixed(pt: np.ndarray) -> tuple[int, int]:
    return int(round(float(pt[0]) * _ONE)), int(round(float(pt[1]) * _ONE))


def draw_shape(img: np.ndarray, label: np.ndarray | None, value: int, shape: tuple) -> None:
    """Paint one shape (capsule, poly, ellipse, circle, line; image px) into `img` (AA) and `label` (no AA)."""
    kind, colour = shape[0], tuple(float(c) for c in np.clip(shape[1], 0, 255))
    targets = [(img, colour, cv2.LINE_AA)] + ([(label, value, cv2.LINE_8)] if label is not None else [])
    for dst, c, lt in targets:
        if kind == "capsule":
            a, b, ra, rb = shape[2], shape[3], shape[4], shape[5]
            vec = b - a
            nrm = np.array([-vec[1], vec[0]]) / max(float(np.hypot(*vec)), 1e-6)
            quad = np.stack([a + nrm * ra, b + nrm * rb, b - nrm * rb, a - nrm * ra])
            cv2.fillPoly(dst, [np.round(quad * _ONE).astype(np.int32)], c, lt, SHIFT)
            cv2.circle(dst, _fixed(a), int(round(ra * _ONE)), c, -1, lt, SHIFT)
            cv2.circle(dst, _fixed(b), int(round(rb * _ONE)), c, -1, lt, SHIFT)
        elif kind == "poly":
            cv2.fillPoly(dst, [np.round(shape[2] * _ONE).astype(np.int32)], c, lt, SHIFT)
        elif kind == "ellipse":
            axes = (int(round(shape[3][0] * _ONE)), int(round(shape[3][1] * _ONE)))
            cv2.ellipse(dst, _fixed(shape[2]), axes, 0.0, 0.0, 360.0, c, -1, lt, SHIFT)
        elif kind == "circle":
            cv2.circle(dst, _fixed(shape[2]), int(round(shape[3] * _ONE)), c, -1, lt, SHIFT)
        elif kind == "line":
            cv2.line(dst, _fixed(shape[2]), _fixed(shape[3]), c, max(1, int(round(shape[4]))), lt, SHIFT)
        else:
            raise AssertionError(f"unknown shape kind {kind!r}")


def render_figure(img: np.ndarray, label: np.ndarray, fig: Figure, layer: int) -> np.ndarray:
    """Paint `fig` far to near into `img` (H, W, 3) uint8 BGR and `label` (H, W) int32, in place.

    Returns:
        (17,) int: for each joint the label value of the nearest part that owns it (0 if none); the joint is
        visible when the final label at its pixel lies in [layer * LABELS_PER_LAYER + 1, that value].
    """
    own = np.zeros(17, dtype=np.int64)
    assert len(fig.parts) < LABELS_PER_LAYER
    for rank, (_, owned, shapes) in enumerate(fig.parts):
        value = layer * LABELS_PER_LAYER + rank + 1
        for shape in shapes:
            draw_shape(img, label, value, shape)
        own[list(owned)] = value
    return own
