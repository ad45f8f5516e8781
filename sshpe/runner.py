"""What `sshpe eval`, `sshpe export` and `sshpe predict` do with files: find weights and data, rebuild networks,
write outputs."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sshpe.atomic import atomic_write_bytes, atomic_write_text
from sshpe.checkpoint import (
    load_teacher_weights,
    load_weights,
    loadable_checkpoint,
    read_trainer_state,
    verify_checkpoint,
)
from sshpe.data.locations import shard_location
from sshpe.evaluation.coco_ap import rescore
from sshpe.export import export_model, load_exported
from sshpe.portable_paths import candidates, first_existing, read_run_paths
from sshpe.recipe import Recipe, RecipeError, load_recipe

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
RELOCATE_HINT = "move runs/ and the data together (same relative layout), or pass --set data.shards=SHARD_DIR"


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
    from sshpe.loop import eval_network, network_name, student_networks

    recipe = _run_recipe(run, None, [])
    nets, teacher, ckpt = load_run_nets(run, recipe, checkpoint)
    choices = {network_name(k, len(nets.nets)): net for k, net in student_networks(recipe, nets).items()}
    choices.setdefault("student", nets.nets[0])  # of several networks, "student" is the first (student_a)
    if teacher is not None:
        choices["teacher"] = teacher.nets[0]
    if network == "auto":
        net, network = eval_network(recipe, nets, teacher)
    elif network not in choices:
        raise ValueError(f"--network {network!r} is not available in {run}; choose from {sorted(choices)}")
    else:
        net = choices[network]
    step = read_trainer_state(ckpt).get("step")
    provenance = {"step": step, "checkpoint": str(Path(ckpt).resolve())} if step is not None else None
    return export_model(net, out or run / "export" / "model.safetensors", recipe, network, provenance)


def model_file(path: Path) -> Path:
    """The weights to run for `path`: the file itself, or a run folder's `final/model.safetensors` (exported from its
    latest complete checkpoint into RUN/export/ when the run has not finished)."""
    path = Path(path)
    if not path.is_dir():
        return path
    final = path / "final" / "model.safetensors"
    return final if final.is_file() else export_run(path, None, None, "auto")


def _stored_shards(run: Path, stored: dict, overrides: list[str]) -> list[str]:
    """Overrides that point `data.shards` at the shard folder the run trained on (found absolute first, then
    relative to the run folder), unless the user overrides it or the run read remote shards (a URL stays as it is)."""
    if any(o.split("=", 1)[0].strip() == "data.shards" for o in overrides):
        return overrides
    if shard_location(stored["shards"]["path"]).is_remote:
        return [f"data.shards={json.dumps(stored['shards']['path'])}", *overrides]
    shards = first_existing(candidates(stored["shards"], run), f"{run}/paths.json: the shard folder", RELOCATE_HINT)
    return [f"data.shards={json.dumps(str(shards))}", *overrides]


def evaluate_model(
    model: Path, recipe_path: Path | None, overrides: list[str], split: str | None, results: Path | None
):
    """COCO AP of an exported model or a run folder's final model on a recipe's val shards.

    A run folder's own recipe reads the shards and the val ground truth recorded when training started
    (`paths.json`), so it works from any working directory and after moving runs/ and the data together.
    """
    from sshpe.data.shard_writer import read_manifest, source_file
    from sshpe.distributed import build_accelerator
    from sshpe.loop import evaluate_nets

    model, overrides = Path(model), list(overrides)
    if model.is_dir():
        stored = read_run_paths(model) if recipe_path is None else None
        if stored is not None:
            overrides = _stored_shards(model, stored, overrides)
        recipe = _run_recipe(model, recipe_path, overrides)
        weights = model_file(model)
    else:
        if recipe_path is None:
            raise RecipeError(f"{model}: evaluating a bare model file needs --recipe (it names the val shards)")
        recipe, weights = load_recipe(recipe_path, overrides), model
    if split:
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"val_split": split})})
    accelerator = build_accelerator(recipe)
    net, _ = load_exported(weights, accelerator.device)
    shards = recipe.data.shards
    manifest = read_manifest(shards)
    if recipe.data.val_split not in manifest["splits"]:
        raise RecipeError(
            f"{recipe.data.shards}: no split {recipe.data.val_split!r} (has {sorted(manifest['splits'])})"
        )
    source_file(manifest, shards, "val_annotations")  # the ground truth, found before any prediction runs
    out_dir = results.parent if results else None
    stats = evaluate_nets(net, recipe, accelerator, manifest, out_dir)
    if results and out_dir and (out_dir / "results.json") != results:
        os.replace(out_dir / "results.json", results)
    return stats, f"{weights} on {recipe.data.shards}:{recipe.data.val_split}"


def _image_files(paths: list[Path]) -> list[Path]:
    """Image files of the inputs (folders: their images, not recursive), in order, each file once."""
    files: dict[Path, Path] = {}
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found = [p]
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
        for f in found:
            files.setdefault(f.resolve(), f)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {[str(p) for p in paths]}")
    return list(files.values())


def overlay_names(files: list[Path]) -> list[str]:
    """Output name of each input's overlay, all different: `<stem>_pose.jpg` under the input's folder relative to
    the folder all inputs share (`a/same.jpg`, `b/same.jpg` -> `a/same_pose.jpg`, `b/same_pose.jpg`); a name taken
    already (same stem, another extension) gets `-2`, `-3`, ..."""
    parents = [f.resolve().parent for f in files]
    common = Path(os.path.commonpath(parents))
    names: list[str] = []
    for f, parent in zip(files, parents):
        stem = (parent.relative_to(common) / f"{f.stem}_pose").as_posix()
        name, n = f"{stem}.jpg", 2
        while name in names:
            name, n = f"{stem}-{n}.jpg", n + 1
        names.append(name)
    return names


@dataclass(frozen=True)
class Predictions:
    """What `predict_images` wrote: `path` (keypoints.json), image and person counts, and notes on boxes left out."""

    path: Path
    images: int
    people: int
    notes: list[str]


def predict_images(
    model: Path,
    images: list[Path],
    out: Path,
    boxes_file: Path | None = None,
    overlay: bool = True,
    *,
    image_info: Path | None = None,
    whole_image: bool = False,
    score_thr: float = 0.0,
    device: str = "auto",
    batch_size: int = 32,
) -> Predictions:
    """Keypoints of every person box of every image -> `out/keypoints.json` (+ overlays), batched on `device`.

    Args:
        model: exported model file or run folder.
        images: image files or folders.
        boxes_file: person boxes (`sshpe.inference.boxes.read_boxes`: COCO detection results with `image_info`, or
            {file_name, bbox, score} entries); None: the whole image is the person box.
        whole_image: with `boxes_file`, images it does not name use the whole image (else that is an error).
        score_thr: boxes scored below it are left out.

    Raises:
        ValueError: a malformed boxes entry (file and entry index), input images the boxes file does not name (all
            listed before any inference), an unreadable image.
    """
    from sshpe.inference.boxes import match_images, read_boxes
    from sshpe.inference.overlay import draw_person
    from sshpe.inference.pose_model import check_boxes, load_model, read_rgb
    from sshpe.schema import joint_sides

    files = _image_files(images)
    boxes = read_boxes(boxes_file, image_info, score_thr) if boxes_file is not None else None
    matched = match_images(files, list(boxes.by_name), boxes.path) if boxes is not None else {}
    missing = [f for f in files if boxes is not None and matched[f] is None]
    if missing and not whole_image:
        raise ValueError(
            f"{len(missing)} input image(s) have no entry in {boxes_file}: {', '.join(map(str, missing[:5]))}"
            f"{' ...' if len(missing) > 5 else ''}; check the file names (or --image-info), or pass --whole-image to "
            "use the whole image as the person box of those"
        )
    pose = load_model(model, device, batch_size)
    schema = pose.meta["schema"]
    sides = joint_sides(schema["names"], schema["flip_pairs"])
    names = overlay_names(files) if overlay else [None] * len(files)

    def jobs():
        for f, name in zip(files, names):
            rgb = read_rgb(f)
            kept = boxes.by_name[matched[f]] if boxes is not None and matched[f] is not None else None
            bbox = check_boxes([p.bbox for p in kept] if kept is not None else None, rgb.shape[:2], str(f))
            scores = np.array([p.score for p in kept] if kept is not None else [1.0])
            yield (f, name, rgb, bbox, scores), rgb, bbox

    records, n_people = [], 0
    for (f, name, rgb, bbox, box_scores), kpts in pose.predict_stream(jobs()):
        if not np.isfinite(kpts).all():
            raise ValueError(f"{f}: the model gave non-finite keypoints; the model file may be damaged (export again)")
        scores = rescore(kpts[..., 2], box_scores)
        people = [
            {"bbox": [round(float(v), 2) for v in b], "box_score": float(s), "score": round(float(p), 4),
             "keypoints": k.round(2).tolist()}
            for b, s, p, k in zip(bbox, box_scores, scores, kpts)
        ]  # fmt: skip
        rec = {"file": str(f), "width": rgb.shape[1], "height": rgb.shape[0]}
        if boxes is not None and matched[f] in boxes.image_ids:
            rec["image_id"] = boxes.image_ids[matched[f]]
        records.append(rec | {"overlay": name, "people": people})
        n_people += len(people)
        if name is not None:
            img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            for p in people:
                draw_person(img, np.array(p["keypoints"]), p["bbox"], p["box_score"], p["score"], schema["skeleton"],
                            sides)  # fmt: skip
            ok, buf = cv2.imencode(".jpg", img)
            if not ok:
                raise RuntimeError(f"{f}: OpenCV could not encode the overlay as JPEG")
            atomic_write_bytes(Path(out) / name, buf.tobytes())
    doc = {"model": str(model), "keypoint_names": schema["names"], "images": records}
    dest = atomic_write_text(Path(out) / "keypoints.json", json.dumps(doc, indent=1, allow_nan=False))
    return Predictions(dest, len(records), n_people, boxes.notes if boxes is not None else [])
