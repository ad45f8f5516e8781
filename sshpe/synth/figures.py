"""Synthetic people for `sshpe synth`: a pseudo-3D body (COCO-17 joints plus the MPII/AIC extras), a pose sampler,
clothing and hair, and a renderer that paints one figure as shaded volumes into a colour image and a part-label map
at exactly the joint centres it reports.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from sshpe.schema import COCO_NAMES

FACINGS = ("front", "back", "left", "right")
# Yaw of the body about the vertical axis (degrees). "left" = the person's left side faces the camera.
_FACING_YAW = {"front": 0.0, "back": 180.0, "left": -90.0, "right": 90.0}
_FACING_P = (0.4, 0.25, 0.175, 0.175)
POSES = ("standing", "walking", "arms_raised", "crouching", "sitting", "free")
_POSE_P = (0.34, 0.3, 0.1, 0.08, 0.08, 0.1)
# Joints MPII and AI Challenger label that COCO does not (synthetic native formats, `extra_joints` in the files).
EXTRA_NAMES = ("pelvis", "thorax", "upper_neck", "head_top")
JOINT_NAMES = COCO_NAMES + EXTRA_NAMES

SHIFT = 4  # cv2 fixed-point bits: every drawn coordinate is a multiple of 1/16 px
_ONE = 1 << SHIFT
LABELS_PER_LAYER = 64  # label map value = layer * LABELS_PER_LAYER + part rank + 1

# Segment lengths (fractions of the standing height; jittered per person).
_LENGTHS = {
    "head_r": 0.064, "neck": 0.04, "torso": 0.29, "shoulder_w": 0.23, "hip_w": 0.16,
    "upper_arm": 0.17, "forearm": 0.15, "hand": 0.075, "thigh": 0.245, "shin": 0.24, "foot": 0.13,
}  # fmt: skip
# Diameters (fractions of the standing height; jittered per person): limbs, neck, torso front width and depth.
_WIDTHS = {
    "upper_arm": 0.075, "forearm": 0.062, "hand": 0.05, "thigh": 0.115, "shin": 0.082, "foot": 0.055,
    "neck": 0.06, "chest": 0.2, "waist": 0.175, "depth": 0.17,
}  # fmt: skip
_SKIN = np.array([[60, 80, 110], [90, 130, 180], [120, 160, 210], [150, 190, 230], [40, 60, 90]], float)
_HAIR = np.array([[20, 20, 25], [30, 50, 80], [60, 110, 160], [150, 150, 150], [20, 40, 120]], float)
# A face point is hidden by the head when it lies this far (in head radii) behind the head centre; the nose
# protrudes, so it stays visible slightly past a true profile.
_FACE_HIDE = {"nose": 0.45, "left_eye": 0.2, "right_eye": 0.2, "left_ear": 0.2, "right_ear": 0.2}
_LIGHT_XY = (-0.45, -0.89)  # light from the upper left, image frame (unit vector toward the light)
_LIGHT = np.array(_LIGHT_XY)

Points = dict[str, np.ndarray]  # name -> (2,) image px or (3,) body units
Depths = dict[str, float]  # name -> depth toward the camera, units of standing height
Sizes = dict[str, float]
Colours = dict[str, np.ndarray]  # name -> (3,) BGR
Shape = tuple  # (kind, colour, *geometry in image px), see draw_shape; a kind starting with "~" is paint-only
Part = tuple[float, tuple[int, ...], list[Shape]]  # (depth, owned joint indices into JOINT_NAMES, shapes)


def choice_cdf(p: Sequence[float]) -> tuple[float, ...]:
    """The cumulative distribution `np.random.Generator.choice(..., p=p)` searches, normalised exactly as numpy does."""
    cdf = np.asarray(p, dtype=np.float64).cumsum()
    cdf /= cdf[-1]
    return tuple(cdf.tolist())


def choose(rng: np.random.Generator, options: Sequence, cdf: tuple[float, ...]):
    """`rng.choice(options, p=p)` for `cdf = choice_cdf(p)`: the same single `rng.random()` draw and the same pick,
    without numpy's per-call argument checks (the renderer calls it a few times per person)."""
    return options[bisect.bisect_right(cdf, rng.random())]


_FACING_CDF, _POSE_CDF = choice_cdf(_FACING_P), choice_cdf(_POSE_P)
_LEGWEAR, _LEGWEAR_CDF = ("trousers", "shorts", "skirt"), choice_cdf((0.65, 0.2, 0.15))
_HAIRSTYLES, _HAIRSTYLE_CDF = ("short", "long", "bald"), choice_cdf((0.6, 0.32, 0.08))


@dataclass
class Figure:
    """One sampled person, already placed in the image.

    Attributes:
        facing: one of FACINGS (the nearest of front/back/left/right to the sampled yaw).
        pose: one of POSES.
        height_px: standing height in image px.
        kpts_img: (21, 2) joint centres in JOINT_NAMES order (COCO-17, then EXTRA_NAMES), image px (pixel centres
            at integers), multiples of 1/16 px.
        face_hidden: (21,) True for face points on the far side of the head (hidden by the head itself).
        head_box: (4,) x1, y1, x2, y2 of the head (skin and hair), image px: MPII's head rectangle.
        parts: drawables, far to near; each is (depth, owned joint indices, shapes).
    """

    facing: str
    pose: str
    height_px: float
    kpts_img: np.ndarray
    face_hidden: np.ndarray
    head_box: np.ndarray
    parts: list[Part] = field(default_factory=list)


def sample_pose(rng: np.random.Generator, kind: str) -> dict[str, np.ndarray]:
    """Joint angles in degrees for one pose family; limb arrays are (2,) = (left, right).

    Swing rotates a limb forward in the sagittal plane (0 = hanging down), abduction outward in the frontal plane,
    elbow flex bends the forearm forward, knee flex bends the shin backward.
    """
    u, n = rng.uniform, rng.normal
    arm_swing, arm_abd, elbow = n(0, 10, 2), u(4, 18, 2), u(0, 25, 2)
    leg_swing, leg_abd, knee, lean = n(0, 4, 2), u(0, 7, 2), u(0, 8, 2), n(0, 4)
    if kind == "walking":
        leg_swing = np.array([1.0, -1.0]) * u(10, 25) * rng.choice([-1.0, 1.0]) + n(0, 4, 2)
        arm_swing, arm_abd, elbow = -leg_swing * u(0.6, 1.0), u(4, 12, 2), u(10, 45, 2)
        leg_abd, knee, lean = u(0, 5, 2), np.where(leg_swing < 0, u(15, 45, 2), u(0, 15, 2)), u(0, 8)
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
        arm_swing, arm_abd, elbow = u(-50, 110, 2), u(0, 110, 2), u(0, 120, 2)
        leg_swing, leg_abd, knee, lean = u(-25, 60, 2), u(0, 25, 2), u(0, 90, 2), u(-10, 25)
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

    Returns named (3,) points: the 17 COCO joints and EXTRA_NAMES by name, plus neck, head (centre), hair,
    chest/belly/backpack anchors and the hand/toe ends.
    """
    lean, bend = math.radians(float(pose["lean"])), math.radians(float(pose["bend"]))
    up = np.array([math.sin(bend), -math.cos(bend) * math.cos(lean), math.cos(bend) * math.sin(lean)])
    fwd = np.array([0.0, -math.sin(lean), math.cos(lean)])  # torso front normal
    pelvis = np.zeros(3)
    neck = pelvis + length["torso"] * up
    r = length["head_r"]
    head = neck + (length["neck"] + 0.85 * r) * up
    pts = {"pelvis": pelvis, "neck": neck, "head": head, "thorax": neck, "hair": head + r * (0.15 * up - 0.3 * fwd)}
    pts["upper_neck"] = neck + length["neck"] * up
    pts["head_top"] = head + r * up
    pts["chest"] = neck - 0.3 * length["torso"] * up + 0.06 * fwd
    pts["belly"] = neck - 0.7 * length["torso"] * up + 0.06 * fwd
    pts["backpack"] = neck - 0.35 * length["torso"] * up - 0.11 * fwd
    pts["nose"] = head + r * (1.1 * fwd - 0.15 * up)
    for name, side in (("left", 1.0), ("right", -1.0)):
        i = 0 if side > 0 else 1
        pts[f"{name}_eye"] = head + r * (np.array([0.38 * side, 0.0, 0.0]) + 0.8 * fwd + 0.12 * up)
        pts[f"{name}_ear"] = head + r * np.array([0.95 * side, 0.0, 0.0])
        sho = neck + np.array([side * length["shoulder_w"] / 2, 0.03, 0.0])
        arm = _limb_dir(pose["arm_swing"][i], pose["arm_abd"][i], side)
        fore = _limb_dir(pose["arm_swing"][i] + pose["elbow"][i], pose["arm_abd"][i], side)
        pts[f"{name}_shoulder"], pts[f"{name}_elbow"] = sho, sho + length["upper_arm"] * arm
        pts[f"{name}_wrist"] = pts[f"{name}_elbow"] + length["forearm"] * fore
        pts[f"{name}_hand"] = pts[f"{name}_wrist"] + length["hand"] * fore
        hip = pelvis + np.array([side * length["hip_w"] / 2, 0.0, 0.0])
        thigh = _limb_dir(pose["leg_swing"][i], pose["leg_abd"][i], side)
        shin = _limb_dir(pose["leg_swing"][i] - pose["knee"][i], pose["leg_abd"][i], side)
        pts[f"{name}_hip"], pts[f"{name}_knee"] = hip, hip + length["thigh"] * thigh
        pts[f"{name}_ankle"] = pts[f"{name}_knee"] + length["shin"] * shin
        pts[f"{name}_toe"] = pts[f"{name}_ankle"] + np.array([0.0, 0.03, length["foot"]])
    return pts


@dataclass(frozen=True)
class Outfit:
    """Colours (BGR) and clothing choices of one person."""

    colours: Colours
    long_sleeves: bool
    legwear: str  # "trousers", "shorts" or "skirt"
    hair: str  # "short", "long" or "bald"
    watch: bool  # on the left wrist: a side cue
    strap: bool  # a bag strap from the left shoulder to the right hip: a side cue
    backpack: bool  # seen from behind only: a front/back cue
    print_: bool  # a patch on the shirt front: a front/back cue


def sample_outfit(rng: np.random.Generator) -> Outfit:
    """Skin, hair, shirt, legwear and shoe colours plus the clothing choices."""
    skin = _SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 8, 3)
    shirt, pants = rng.uniform(20, 235, 3), rng.uniform(20, 200, 3)
    colours = {
        "skin": skin, "hair": _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 8, 3), "shirt": shirt,
        "pants": pants, "shoe": rng.uniform(10, 120, 3), "watch": rng.uniform(0, 255, 3),
        "strap": rng.uniform(0, 120, 3), "eye": rng.uniform(0, 40, 3), "pack": rng.uniform(20, 200, 3),
        "print": 255 - shirt * rng.uniform(0.3, 0.8),
    }  # fmt: skip
    return Outfit(
        colours=colours,
        long_sleeves=bool(rng.random() < 0.55),
        legwear=choose(rng, _LEGWEAR, _LEGWEAR_CDF),
        hair=choose(rng, _HAIRSTYLES, _HAIRSTYLE_CDF),
        watch=bool(rng.random() < 0.6),
        strap=bool(rng.random() < 0.35),
        backpack=bool(rng.random() < 0.3),
        print_=bool(rng.random() < 0.5),
    )


def sample_figure(
    rng: np.random.Generator, anchor_img: tuple[float, float], height_px: float, facing: str | None = None,
    *, anchor: str = "center",
) -> Figure:  # fmt: skip
    """Sample body proportions, pose, facing, tilt and clothes, and place the figure.

    Args:
        anchor_img: where the anchor point lands, image px.
        height_px: standing height, image px.
        facing: force a facing (one of FACINGS); sampled when None.
        anchor: "center" puts the centre of the figure's extent at `anchor_img`; "feet" puts the lower of the two
            ankles there (people standing on a ground plane).
    """
    facing = facing or choose(rng, FACINGS, _FACING_CDF)
    pose_kind = choose(rng, POSES, _POSE_CDF)
    length = {k: v * math.exp(rng.normal(0, 0.06)) for k, v in _LENGTHS.items()}
    build = math.exp(rng.normal(0, 0.1))  # slim .. broad, shared by all widths
    width = {k: v * build * math.exp(rng.normal(0, 0.06)) * height_px for k, v in _WIDTHS.items()}
    pts3 = pose_to_points(length, sample_pose(rng, pose_kind))
    yaw = math.radians(_FACING_YAW[facing] + rng.normal(0, 15))
    tilt = math.radians(min(max(rng.normal(0, 6), -25.0), 25.0))
    names = list(pts3)
    xyz = np.stack([pts3[k] for k in names])
    u = xyz[:, 0] * math.cos(yaw) + xyz[:, 2] * math.sin(yaw)
    depth = -xyz[:, 0] * math.sin(yaw) + xyz[:, 2] * math.cos(yaw)
    rot = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
    uv = np.stack([u, xyz[:, 1]], 1) @ rot.T * height_px
    if anchor == "feet":
        ankles = uv[[names.index("left_ankle"), names.index("right_ankle")]]
        uv += np.asarray(anchor_img) - ankles[np.argmax(ankles[:, 1])]
    else:
        uv += np.asarray(anchor_img) - (uv.min(0) + uv.max(0)) / 2
    uv = np.round(uv * _ONE) / _ONE  # exactly what cv2 draws with shift=SHIFT
    p2 = dict(zip(names, uv))
    dz = dict(zip(names, depth.tolist()))
    kpts = uv[[names.index(k) for k in JOINT_NAMES]]
    face_hidden = np.array([_face_hidden(dz, k, length["head_r"]) for k in JOINT_NAMES])
    outfit = sample_outfit(rng)
    r_px = length["head_r"] * height_px
    hair_pad = 0.0 if outfit.hair == "bald" else 0.12 * r_px
    half = np.array([0.85 * r_px + hair_pad, r_px + hair_pad])
    head_box = np.concatenate([p2["head"] - half, p2["head"] + half])
    parts = _build_parts(p2, dz, length, width, height_px, outfit)
    return Figure(facing, pose_kind, float(height_px), kpts, face_hidden, head_box, parts)


def _face_hidden(dz: Depths, name: str, head_r: float) -> bool:
    """Whether face point `name` is on the far side of the head (False for body joints)."""
    return name in _FACE_HIDE and dz[name] < dz["head"] - _FACE_HIDE[name] * head_r


def _idx(*names: str) -> tuple[int, ...]:
    return tuple(JOINT_NAMES.index(n) for n in names)


def _limb(colour: np.ndarray, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> list[Shape]:
    """A shaded limb: the silhouette in a darker tone, a lit core, a highlight on the light side.

    Plain-float arithmetic in the same operation order as the vector form, so the drawn pixels are exact.
    """
    ax, ay, bx, by = float(a[0]), float(a[1]), float(b[0]), float(b[1])
    vx, vy = bx - ax, by - ay
    norm = max(float(np.hypot(vx, vy)), 1e-6)
    nx, ny = -vy / norm, vx / norm
    towards = nx * _LIGHT_XY[0] + ny * _LIGHT_XY[1]
    if abs(towards) < 1e-9:  # the sign of a near-zero dot product can depend on FMA: decide it as numpy does
        towards = float(np.array([nx, ny]) @ _LIGHT)
    lx, ly = (nx, ny) if towards > 0 else (-nx, -ny)
    c0, c1, c2 = colour.tolist()
    return [
        ("capsule", (c0 * 0.62, c1 * 0.62, c2 * 0.62), (ax, ay), (bx, by), ra, rb),
        ("~capsule", (c0 * 0.9, c1 * 0.9, c2 * 0.9), (ax + lx * 0.12 * ra, ay + ly * 0.12 * ra),
         (bx + lx * 0.12 * rb, by + ly * 0.12 * rb), 0.72 * ra, 0.72 * rb),
        ("~capsule", (min(c0 * 1.15 + 12, 255.0), min(c1 * 1.15 + 12, 255.0), min(c2 * 1.15 + 12, 255.0)),
         (ax + lx * 0.4 * ra, ay + ly * 0.4 * ra), (bx + lx * 0.4 * rb, by + ly * 0.4 * rb), 0.25 * ra, 0.25 * rb),
    ]  # fmt: skip


def _build_parts(p2: Points, dz: Depths, length: Sizes, width: Sizes, height_px: float, outfit: Outfit) -> list[Part]:
    """Drawables (depth, owned joint indices, shapes) sorted far to near; shapes carry BGR colours."""
    parts = _limb_parts("left", 0.8, p2, dz, width, outfit)  # the left limbs are a little darker: a side cue
    parts += _limb_parts("right", 1.0, p2, dz, width, outfit)
    torso = _torso(p2, dz, length, width, height_px, outfit)
    head = _head(p2, dz, length["head_r"], height_px, outfit)
    parts += [torso, (max(head[0], torso[0]) + 0.01, head[1], head[2])]  # the head is never behind the neck
    if outfit.backpack:
        r = 0.5 * width["chest"] * 0.8
        pack = [("ellipse", outfit.colours["pack"] * 0.7, p2["backpack"], (r, 1.3 * r)),
                ("~ellipse", outfit.colours["pack"], p2["backpack"], (0.75 * r, 1.1 * r))]  # fmt: skip
        parts.append((float(dz["backpack"]) - 0.03, (), pack))
    parts.sort(key=lambda part: part[0])
    return parts


def _limb_parts(side: str, shade: float, p2: Points, dz: Depths, width: Sizes, outfit: Outfit) -> list[Part]:
    """Upper arm, forearm (+ a watch on the left wrist), hand, thigh, shin and shoe of one side."""
    c = {k: v * shade for k, v in outfit.colours.items()}
    sh, el, wr, hip, kn, an = _idx(*(f"{side}_{j}" for j in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")))
    p = {k: p2[f"{side}_{k}"] for k in ("shoulder", "elbow", "wrist", "hand", "hip", "knee", "ankle", "toe")}
    z = {k: dz[f"{side}_{k}"] for k in p}
    r = {k: width[k] / 2 for k in ("upper_arm", "forearm", "hand", "thigh", "shin", "foot")}
    sleeve = c["shirt"] if outfit.long_sleeves else c["skin"]
    forearm = _limb(sleeve, p["elbow"], p["wrist"], r["forearm"], r["forearm"] * 0.85)
    if side == "left" and outfit.watch:
        band = p["elbow"] + 0.88 * (p["wrist"] - p["elbow"])
        forearm.append(("~circle", c["watch"] / shade, band, r["forearm"] * 0.9))
    shin_colour = c["pants"] if outfit.legwear == "trousers" else c["skin"]
    thigh_colour = c["skin"] if outfit.legwear == "skirt" else c["pants"]

    # Legs sit slightly behind arms at equal depth; the hand and foot are drawn over their limb.
    def seg(a: str, b: str, colour: np.ndarray, radius: str, taper: float) -> list[Shape]:
        return _limb(colour, p[a], p[b], r[radius], r[radius] * taper)

    return [
        ((z["shoulder"] + z["elbow"]) / 2, (sh, el), seg("shoulder", "elbow", c["shirt"], "upper_arm", 0.85)),
        ((z["elbow"] + z["wrist"]) / 2, (el, wr), forearm),
        ((z["wrist"] + z["hand"]) / 2 + 1e-3, (wr,), seg("wrist", "hand", c["skin"], "hand", 0.8)),
        ((z["hip"] + z["knee"]) / 2 - 0.01, (hip, kn), seg("hip", "knee", thigh_colour, "thigh", 0.72)),
        ((z["knee"] + z["ankle"]) / 2 - 0.01, (kn, an), seg("knee", "ankle", shin_colour, "shin", 0.7)),
        ((z["ankle"] + z["toe"]) / 2 - 0.005, (an,), seg("ankle", "toe", c["shoe"], "foot", 0.8)),
    ]


def _torso(p2: Points, dz: Depths, length: Sizes, width: Sizes, height_px: float, outfit: Outfit) -> Part:
    """Neck, a rounded torso whose width blends its front width and its depth with the yaw, hips, a skirt, and
    the front print and bag strap when chosen."""
    c = outfit.colours
    sin_yaw = min(1.0, abs(dz["left_hip"] - dz["right_hip"]) / length["hip_w"])
    cos_yaw = math.sqrt(max(0.0, 1 - sin_yaw**2))
    chest_r = 0.5 * (width["chest"] * cos_yaw + width["depth"] * sin_yaw)
    waist_r = 0.5 * (width["waist"] * cos_yaw + width["depth"] * 0.9 * sin_yaw)
    mid_sh = (p2["left_shoulder"] + p2["right_shoulder"]) / 2
    mid_hip = (p2["left_hip"] + p2["right_hip"]) / 2
    shapes: list[Shape] = _limb(c["skin"], p2["neck"], p2["upper_neck"] + 0.3 * (p2["head"] - p2["upper_neck"]),
                                width["neck"] / 2, width["neck"] / 2)  # fmt: skip
    shoulder_r = 0.5 * width["upper_arm"] * 1.05
    shapes += _limb(c["shirt"], p2["left_shoulder"], p2["right_shoulder"], shoulder_r, shoulder_r)
    shapes += _limb(c["shirt"], mid_sh + 0.12 * (mid_hip - mid_sh), mid_hip, chest_r, waist_r)
    hip_r = 0.5 * width["thigh"] * 1.05
    pants = c["skin"] if outfit.legwear == "skirt" else c["pants"]
    shapes += _limb(pants, p2["left_hip"], p2["right_hip"], hip_r, hip_r)
    if outfit.legwear == "skirt":  # a trapezoid from the hips toward the knees
        knees = (p2["left_knee"] + p2["right_knee"]) / 2
        hem = mid_hip + 0.6 * (knees - mid_hip)
        axis = hem - mid_hip
        nrm = np.array([-axis[1], axis[0]]) / max(float(np.hypot(*axis)), 1e-6)
        quad = np.stack([mid_hip + nrm * waist_r, mid_hip - nrm * waist_r, hem - nrm * 1.5 * waist_r,
                         hem + nrm * 1.5 * waist_r])  # fmt: skip
        shapes.append(("poly", c["pants"], quad))
    front = dz["chest"] > dz["neck"]
    if outfit.print_ and front:
        shapes.append(("~circle", c["print"], p2["chest"], 0.35 * chest_r))
    if outfit.strap:
        shapes.append(("~line", c["strap"], p2["left_shoulder"], p2["right_hip"], max(1.0, 0.012 * height_px)))
    torso_z = float(np.mean([dz[k] for k in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")]))
    eps = 0.5 * length["shoulder_w"] / 2  # a joint this far behind the torso centre is hidden by the torso
    owned = tuple(j for j in _idx("left_shoulder", "right_shoulder", "left_hip", "right_hip")
                  if dz[JOINT_NAMES[j]] >= torso_z - eps) + _idx("pelvis", "thorax", "upper_neck")  # fmt: skip
    return (torso_z - 0.02, owned, shapes)


def _head(p2: Points, dz: Depths, head_r: float, height_px: float, outfit: Outfit) -> Part:
    """Skin ellipse, hair (behind or in front by depth), ears, and eyes/nose on the visible side."""
    c = outfit.colours
    head, hair, r = p2["head"], p2["hair"], head_r * height_px
    axis = p2["head_top"] - head
    angle = math.degrees(math.atan2(axis[0], -axis[1]))
    skin = ("ellipse", c["skin"] * 0.85, head, (0.85 * r, r), angle)
    shapes: list[Shape] = []
    if outfit.hair == "bald":
        shapes += [skin, ("~ellipse", c["skin"], head + 0.1 * r * _LIGHT, (0.6 * r, 0.75 * r), angle)]
    else:
        size = (0.95 * r, 0.95 * r) if outfit.hair == "short" else (1.0 * r, 1.3 * r)
        hair_centre = hair if outfit.hair == "short" else hair + 0.3 * (head - p2["head_top"])
        hair_shape = ("ellipse", c["hair"], hair_centre, size, angle)
        shapes += [skin, hair_shape] if dz["hair"] > dz["head"] else [hair_shape, skin]
    for ear in ("left_ear", "right_ear"):
        if not _face_hidden(dz, ear, head_r):
            shapes.append(("ellipse", c["skin"] * 0.8, p2[ear], (0.25 * r, 0.35 * r), angle))
    if dz["hair"] > dz["head"] and outfit.hair != "bald":  # back view: the hair covers the ears' inner halves
        shapes.append(("ellipse", c["hair"], hair, (0.8 * r, 0.8 * r), angle))
    for eye in ("left_eye", "right_eye"):
        if not _face_hidden(dz, eye, head_r):
            shapes.append(("circle", c["eye"], p2[eye], max(0.7, 0.17 * r)))
    if not _face_hidden(dz, "nose", head_r):  # in profile the nose sticks out of the head's outline
        shapes.append(("circle", c["skin"] * 0.6, p2["nose"], max(0.7, 0.2 * r)))
    return (float(dz["head"]), _idx("nose", "left_eye", "right_eye", "left_ear", "right_ear", "head_top"), shapes)


def _fixed(pt) -> tuple[int, int]:
    """(x, y) image px -> cv2 fixed point (SHIFT bits), rounded half to even as np.round."""
    return round(float(pt[0]) * _ONE), round(float(pt[1]) * _ONE)


def _capsule_quad(a, b, ra: float, rb: float) -> np.ndarray:
    """(1, 4, 2) int32 fixed-point quad joining the tangents of two circles (a, ra) and (b, rb); a, b (2,) image px."""
    ax, ay, bx, by = float(a[0]), float(a[1]), float(b[0]), float(b[1])
    vx, vy = bx - ax, by - ay
    norm = max(math.hypot(vx, vy), 1e-6)
    nx, ny = -vy / norm, vx / norm
    return np.array([[[round((ax + nx * ra) * _ONE), round((ay + ny * ra) * _ONE)],
                      [round((bx + nx * rb) * _ONE), round((by + ny * rb) * _ONE)],
                      [round((bx - nx * rb) * _ONE), round((by - ny * rb) * _ONE)],
                      [round((ax - nx * ra) * _ONE), round((ay - ny * ra) * _ONE)]]], np.int32)  # fmt: skip


def draw_shape(img: np.ndarray, label: np.ndarray | None, value: int, shape: tuple) -> None:
    """Paint one shape (capsule, poly, ellipse, circle, line; image px) into `img` (AA) and `label` (no AA).

    Kinds starting with "~" (shading, prints, straps) paint `img` only: the silhouette in `label` comes from the
    plain shapes. Colours are BGR (clipped to 0-255), points (2,) arrays or tuples.
    """
    kind, col = shape[0], shape[1]
    c0, c1, c2 = col.tolist() if isinstance(col, np.ndarray) else col
    colour = (min(255.0, max(0.0, float(c0))), min(255.0, max(0.0, float(c1))), min(255.0, max(0.0, float(c2))))
    if kind[0] == "~":
        kind, label = kind[1:], None
    aa, no_aa = cv2.LINE_AA, cv2.LINE_8
    if kind == "capsule":
        quad = [_capsule_quad(shape[2], shape[3], shape[4], shape[5])]
        a, b, ra, rb = _fixed(shape[2]), _fixed(shape[3]), round(shape[4] * _ONE), round(shape[5] * _ONE)
        cv2.fillPoly(img, quad, colour, aa, SHIFT)
        cv2.circle(img, a, ra, colour, -1, aa, SHIFT)
        cv2.circle(img, b, rb, colour, -1, aa, SHIFT)
        if label is not None:
            cv2.fillPoly(label, quad, value, no_aa, SHIFT)
            cv2.circle(label, a, ra, value, -1, no_aa, SHIFT)
            cv2.circle(label, b, rb, value, -1, no_aa, SHIFT)
    elif kind == "poly":
        pts = [np.round(shape[2] * _ONE).astype(np.int32)]
        cv2.fillPoly(img, pts, colour, aa, SHIFT)
        if label is not None:
            cv2.fillPoly(label, pts, value, no_aa, SHIFT)
    elif kind == "ellipse":
        centre, axes = _fixed(shape[2]), (round(shape[3][0] * _ONE), round(shape[3][1] * _ONE))
        angle = float(shape[4]) if len(shape) > 4 else 0.0
        cv2.ellipse(img, centre, axes, angle, 0.0, 360.0, colour, -1, aa, SHIFT)
        if label is not None:
            cv2.ellipse(label, centre, axes, angle, 0.0, 360.0, value, -1, no_aa, SHIFT)
    elif kind == "circle":
        centre, r = _fixed(shape[2]), round(shape[3] * _ONE)
        cv2.circle(img, centre, r, colour, -1, aa, SHIFT)
        if label is not None:
            cv2.circle(label, centre, r, value, -1, no_aa, SHIFT)
    elif kind == "line":
        a, b, thick = _fixed(shape[2]), _fixed(shape[3]), max(1, round(shape[4]))
        cv2.line(img, a, b, colour, thick, aa, SHIFT)
        if label is not None:
            cv2.line(label, a, b, value, thick, no_aa, SHIFT)
    else:
        raise AssertionError(f"unknown shape kind {kind!r}")


def render_figure(img: np.ndarray, label: np.ndarray, fig: Figure, layer: int) -> np.ndarray:
    """Paint `fig` far to near into `img` (H, W, 3) uint8 BGR and `label` (H, W) int32, in place.

    Returns:
        (21,) int: for each joint of JOINT_NAMES the label value of the nearest part that owns it (0 if none);
        the joint is visible when the final label at its pixel lies in [layer * LABELS_PER_LAYER + 1, that value].
    """
    own = np.zeros(len(JOINT_NAMES), dtype=np.int64)
    assert len(fig.parts) < LABELS_PER_LAYER
    for rank, (_, owned, shapes) in enumerate(fig.parts):
        value = layer * LABELS_PER_LAYER + rank + 1
        for shape in shapes:
            draw_shape(img, label, value, shape)
        own[list(owned)] = value
    return own
