"""Pose inference on people's images: `load_model(path)` gives a `PosePredictor`, callable on images and person boxes.

Crops of many boxes and images share each forward pass (up to `batch_size` crops) on the chosen device; the crop,
decoding and the map back to image px are those of evaluation (`sshpe.evaluation.predict`, `sshpe.evaluation.coco_ap`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch

from sshpe import geometry
from sshpe.evaluation.coco_ap import heatmap_to_image
from sshpe.evaluation.codec import decode_heatmaps
from sshpe.evaluation.predict import predict_heatmaps
from sshpe.export import load_exported
from sshpe.schema import flip_index_from_pairs
from sshpe.views import normalize

DEVICES = ("auto", "cpu", "cuda")
Tag = TypeVar("Tag")


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` -> the GPU when one is visible, else the CPU; `cpu`, `cuda`, `cuda:N` as given (refused when absent)."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device {name!r}: choose one of {list(DEVICES)} (or cuda:N)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA device is visible (torch.cuda.is_available() is False); use cpu")
    return torch.device(name)


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) RGB uint8 pixels of an image file (EXIF orientation ignored, as COCO's boxes assume)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ValueError(f"{path}: not a readable image (OpenCV could not decode it)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_boxes(boxes: object, image_hw: tuple[int, int], where: str) -> np.ndarray:
    """Person boxes as an (N, 4) float64 array of [x, y, w, h] image px; None means the whole image.

    Raises:
        ValueError: naming `where` and the box, for a wrong shape, a non-finite value or a width/height <= 0 (such a
            box has no crop; its keypoints would be NaN).
    """
    if boxes is None:
        h, w = image_hw
        return np.array([[0.0, 0.0, float(w), float(h)]])
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{where}: boxes of shape {arr.shape}; expected (N, 4) rows of [x, y, w, h] in image px")
    bad = np.flatnonzero(~np.isfinite(arr).all(1) | (arr[:, 2] <= 0) | (arr[:, 3] <= 0))
    if bad.size:
        raise ValueError(f"{where}: box {int(bad[0])} {arr[bad[0]].tolist()} is degenerate (w, h must be finite, > 0)")
    return arr


class PosePredictor:
    """An exported pose network ready for images: `model(images, boxes)` -> keypoints.

    Attributes:
        meta: the model file's metadata (keypoint schema, input size, decoding, recipe hash, ...).
        names: joint names, in output order.
        device: where the network runs.
        batch_size: crops per forward pass.
    """

    def __init__(self, net: torch.nn.Module, meta: dict, device: torch.device, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: give at least 1 crop per forward pass")
        self.net, self.meta, self.device, self.batch_size = net, meta, device, batch_size
        schema = meta["schema"]
        self.names: list[str] = list(schema["names"])
        self.input_hw = (int(meta["input_size"][0]), int(meta["input_size"][1]))
        flip = meta["decode"]["flip_test"]
        self._flip = flip_index_from_pairs(len(self.names), schema["flip_pairs"]) if flip else None

    def __call__(self, images, boxes=None):
        """Keypoints of every person box.

        Args:
            images: one image or a list: (H, W, 3) RGB uint8 arrays or image file paths.
            boxes: for one image, (N, 4) [x, y, w, h] image px (None: the whole image is the person box); for a
                list, one such entry per image (or None for whole images everywhere).

        Returns:
            For one image an (N, K, 3) float64 array of x, y (image px) and confidence per joint; for a list, a list
            of those.
        """
        single = isinstance(images, (str, Path, np.ndarray))
        imgs = [images] if single else list(images)
        per_image = [boxes] if single else ([None] * len(imgs) if boxes is None else list(boxes))
        if len(per_image) != len(imgs):
            raise ValueError(f"{len(imgs)} images but {len(per_image)} box lists; give one (or None) per image")
        jobs = []
        for i, (img, b) in enumerate(zip(imgs, per_image)):
            rgb = read_rgb(Path(img)) if isinstance(img, (str, Path)) else _as_rgb(img, f"image {i}")
            jobs.append((i, rgb, check_boxes(b, rgb.shape[:2], f"image {i}")))
        out = [kpts for _, kpts in self.predict_stream(jobs)]
        return out[0] if single else out

    @torch.no_grad()
    def predict_stream(self, jobs: Iterable[tuple[Tag, np.ndarray, np.ndarray]]) -> Iterator[tuple[Tag, np.ndarray]]:
        """Stream of (tag, RGB uint8 (H, W, 3), checked boxes (N, 4)) -> (tag, (N, K, 3) x, y image px + confidence),
        in input order. Crops are made on the device image by image and run `batch_size` at a time, so consecutive
        images share forward passes and at most about one batch of crops is held."""
        pending: list[tuple[Tag, int]] = []
        crops, centers, scales = [], [], []
        for tag, rgb, boxes in jobs:
            c, s = self._center_scale(boxes)
            if len(boxes):
                crops.append(self._crop(rgb, c, s))
                centers.append(c)
                scales.append(s)
            pending.append((tag, len(boxes)))
            if sum(n for _, n in pending) >= self.batch_size:
                yield from self._flush(pending, crops, centers, scales)
                pending, crops, centers, scales = [], [], [], []
        yield from self._flush(pending, crops, centers, scales)

    def _center_scale(self, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.input_hw
        cs = [geometry.box_to_center_scale(tuple(b), w / h) for b in boxes]
        center = torch.tensor(np.array([c for c, _ in cs]).reshape(-1, 2), dtype=torch.float64)
        scale = torch.tensor(np.array([s for _, s in cs]).reshape(-1, 2), dtype=torch.float64)
        return center, scale

    def _crop(self, rgb: np.ndarray, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """(N, 3, H_in, W_in) normalised network inputs of the N boxes of one image."""
        h, w = self.input_hw
        n = center.shape[0]
        img = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None].float()
        rot = torch.zeros(n, dtype=torch.float64)
        img_to_crop = geometry.crop_matrix(center, scale[:, 0], rot, (w, h)).to(self.device)
        crop = geometry.warp_images(img.expand(n, -1, -1, -1), img_to_crop, (h, w))
        m = self.meta
        return normalize(crop, m["mean"], m["std"], m["color"])

    def _flush(self, pending, crops, centers, scales) -> Iterator[tuple[Tag, np.ndarray]]:
        k = len(self.names)
        if crops:
            x, center, scale = torch.cat(crops), torch.cat(centers), torch.cat(scales)
            kpts, conf = [], []
            dec = self.meta["decode"]
            for lo in range(0, x.shape[0], self.batch_size):
                hm = predict_heatmaps(self.net, x[lo : lo + self.batch_size], self._flip, dec["shift_heatmap"])
                k_hm, maxv = decode_heatmaps(hm, mode=dec["mode"])
                hm_wh = (hm.shape[-1], hm.shape[-2])
                sl = slice(lo, lo + self.batch_size)
                kpts.append(heatmap_to_image(k_hm.double().cpu(), center[sl], scale[sl], hm_wh).numpy())
                conf.append(maxv.double().cpu().numpy())
            flat = np.concatenate([np.concatenate(kpts), np.concatenate(conf)[..., None]], -1)
        else:
            flat = np.zeros((0, k, 3))
        lo = 0
        for tag, n in pending:
            yield tag, flat[lo : lo + n]
            lo += n


def _as_rgb(img: np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, -1)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{where}: array of shape {arr.shape}; expected (H, W, 3) RGB (or (H, W) grey)")
    if arr.dtype != np.uint8:
        raise ValueError(f"{where}: dtype {arr.dtype}; expected uint8 pixels in 0..255")
    return arr


def load_model(path: str | Path, device: str = "auto", batch_size: int = 32) -> PosePredictor:
    """Load an exported `model.safetensors` (or a run folder's final model) for inference.

    Args:
        path: a `.safetensors` written by `sshpe export` / training, or a run folder (its `final/model.safetensors`,
            exported from the latest checkpoint when the run has not finished).
        device: "auto" (GPU when visible), "cpu", "cuda" or "cuda:N".
        batch_size: crops per forward pass.

    Returns:
        A `PosePredictor`: `model(image, boxes)` -> (N, K, 3) keypoints (x, y image px, confidence); see its docstring.
    """
    from sshpe.runner import model_file

    dev = resolve_device(device)
    net, meta = load_exported(model_file(Path(path)), dev)
    return PosePredictor(net, meta, dev, batch_size)
