"""What `sshpe eval`, `sshpe export` and `sshpe predict` do with files: find weights, rebuild networks, write
outputs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from sshpe import geometry
from sshpe.checkpoint import load_teacher_weights, load_weights, loadable_checkpoint, verify_checkpoint
from sshpe.codec import decode_heatmaps
from sshpe.export import export_model, load_exported
from sshpe.predict import predict_heatmaps
from sshpe.recipe import Recipe, RecipeError, load_recipe
from sshpe.schema import flip_index_from_pairs
from sshpe.views import normalize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _run_recipe(run: Path, recipe: Path | None, overrides: list[str]) -> Recipe:
    path = recipe or run / "recipe.yaml"
    if not Path(path).is_file():
        raise RecipeError(f"{path}: no recipe; pass --recipe (a run folder holds recipe.yaml)")
    return load_recipe(path, overrides)


def load_run_nets(run: Path, recipe: Recipe, checkpoint: Path | None = None):
    """Rebuild the student container (and EMA teacher) from a checkpoint that loads: `checkpoint` (verified), or
    the run's newest complete one whose files load (newer damaged ones are skipped with a warning on stderr)."""
    from sshpe.nets import build_nets

    if checkpoint is not None:
        verify_checkpoint(Path(checkpoint))  # refuses a folder without COMPLETE or with a damaged file
        ckpt = Path(checkpoint)
    else:
        ckpt, warnings = loadable_checkpoint(run / "checkpoints")
        for w in warnings:
            print(w, file=sys.stderr)
    if ckpt is None:
        raise FileNotFoundError(f"{run}/checkpoints has no complete checkpoint that loads; train first or pass "
                                "--checkpoint")  # fmt: skip
    nets = build_nets(recipe)
    load_weights(Path(ckpt), nets)
    teacher = build_nets(recipe)
    if not load_teacher_weights(Path(ckpt), teacher):
        teacher = None
    return nets, teacher, Path(ckpt)


def export_run(run: Path, out: Path | None, checkpoint: Path | None, network: str) -> Path:
    """Export one network of a run's checkpoint (auto: the network the recipe evaluates)."""
    from sshpe.loop import eval_network

    recipe = _run_recipe(run, None, [])
    nets, teacher, _ = load_run_nets(run, recipe, checkpoint)
    choices = {"student": nets.nets[0], "student_b": nets.nets[1] if len(nets.nets) > 1 else None}
    choices["teacher"] = teacher.nets[0] if teacher is not None else None
    if network == "auto":
        net, network = eval_network(recipe, nets, teacher)
    elif choices.get(network) is None:
        raise ValueError(f"--network {network!r} is not available in {run}; choose from "
                         f"{[k for k, v in choices.items() if v is not None]}")  # fmt: skip
    else:
        net = choices[network]
    return export_model(net, out or run / "export" / "model.safetensors", recipe, network)


def evaluate_model(
    model: Path, recipe_path: Path | None, overrides: list[str], split: str | None, results: Path | None
):
    """COCO AP of an exported model or a run folder's final model on a recipe's val shards."""
    from sshpe.data.shard_writer import read_manifest
    from sshpe.distributed import build_accelerator
    from sshpe.loop import evaluate_nets

    model = Path(model)
    if model.is_dir():
        recipe = _run_recipe(model, recipe_path, overrides)
        weights = model / "final" / "model.safetensors"
        if not weights.is_file():
            weights = export_run(model, None, None, "auto")
    else:
        if recipe_path is None:
            raise RecipeError(f"{model}: evaluating a bare model file needs --recipe (it names the val shards)")
        recipe, weights = load_recipe(recipe_path, overrides), model
    if split:
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"val_split": split})})
    accelerator = build_accelerator(recipe)
    net, _ = load_exported(weights, accelerator.device)
    manifest = read_manifest(Path(recipe.data.shards))
    if recipe.data.val_split not in manifest["splits"]:
        raise RecipeError(
            f"{recipe.data.shards}: no split {recipe.data.val_split!r} (has {sorted(manifest['splits'])})"
        )
    out_dir = results.parent if results else None
    stats = evaluate_nets(net, recipe, accelerator, manifest, out_dir)
    if results and out_dir and (out_dir / "results.json") != results:
        os.replace(out_dir / "results.json", results)
    return stats, f"{weights} on {recipe.data.shards}:{recipe.data.val_split}"


def _image_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {[str(p) for p in paths]}")
    return files


def _boxes_for(path: Path, img: np.ndarray, boxes: dict | None) -> list[tuple[list[float], float]]:
    if boxes is None or path.name not in boxes:
        h, w = img.shape[:2]
        return [([0.0, 0.0, float(w), float(h)], 1.0)]
    return [(b["bbox"], float(b.get("score", 1.0))) for b in boxes[path.name]]


@torch.no_grad()
def predict_images(model: Path, images: list[Path], out: Path, boxes_file: Path | None, overlay: bool) -> Path:
    """Keypoints of every person box of every image -> `out/keypoints.json` (+ overlays)."""
    net, meta = load_exported(model)
    h_in, w_in = meta["input_size"]
    schema = meta["schema"]
    flip_index = (
        flip_index_from_pairs(len(schema["names"]), schema["flip_pairs"]) if meta["decode"]["flip_test"] else None
    )
    boxes = None
    if boxes_file is not None:
        boxes = {}
        for b in json.loads(Path(boxes_file).read_text()):
            boxes.setdefault(b["file_name"], []).append(b)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for path in _image_files(images):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            raise ValueError(f"{path}: not a readable image")
        rgb = torch.from_numpy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)[None].float()
        people = []
        for bbox, score in _boxes_for(path, img, boxes):
            c, s = geometry.box_to_center_scale(tuple(bbox), w_in / h_in)
            c_t, s_t = torch.tensor(c)[None], torch.tensor(s)[None]
            m = geometry.crop_matrix(c_t, s_t[:, 0], torch.zeros(1, dtype=torch.float64), (w_in, h_in))
            crop = normalize(
                geometry.warp_images(rgb, m.float(), (h_in, w_in)), meta["mean"], meta["std"], meta["color"]
            )
            hm = predict_heatmaps(net, crop, flip_index, meta["decode"]["shift_heatmap"])
            k_hm, maxv = decode_heatmaps(hm, mode=meta["decode"]["mode"])
            hm_m = geometry.crop_matrix(
                c_t, s_t[:, 0], torch.zeros(1, dtype=torch.float64), (hm.shape[-1], hm.shape[-2])
            )
            k_img = geometry.apply_affine(geometry.invert(hm_m), k_hm.double())[0].numpy()
            kp = np.concatenate([k_img, maxv[0].double().numpy()[:, None]], 1)
            people.append({"bbox": list(map(float, bbox)), "box_score": score, "keypoints": kp.round(2).tolist()})
            if overlay:
                _draw(img, kp, schema["skeleton"])
        records.append({"file": str(path), "people": people})
        if overlay:
            cv2.imwrite(str(out / f"{path.stem}_pose.jpg"), img)
    dest = out / "keypoints.json"
    tmp = dest.with_name(".keypoints.json.tmp")
    tmp.write_text(json.dumps({"keypoint_names": schema["names"], "images": records}, indent=1))
    os.replace(tmp, dest)
    return dest


def _draw(img: np.ndarray, kp: np.ndarray, skeleton: list[list[int]], thr: float = 0.2) -> None:
    for a, b in skeleton:
        if kp[a, 2] > thr and kp[b, 2] > thr:
            cv2.line(
                img, tuple(int(v) for v in kp[a, :2]), tuple(int(v) for v in kp[b, :2]), (0, 200, 255), 2, cv2.LINE_AA
            )
    for x, y, s in kp:
        if s > thr:
            cv2.circle(img, (int(x), int(y)), 3, (0, 255, 0), -1, cv2.LINE_AA)
