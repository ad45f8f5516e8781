"""The `sshpe` command: parse, load the recipe, call one library function (STYLE: the CLI stays thin).

Imports of heavy modules happen inside commands so `sshpe --help` is instant and cannot break.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Semi-supervised human pose estimation trainer.")
recipe_app = typer.Typer(no_args_is_help=True, help="Validate, show and describe recipes.")
model_app = typer.Typer(no_args_is_help=True, help="Inspect model architectures.")
augment_app = typer.Typer(no_args_is_help=True, help="See what a recipe's augmentation paths do.")
app.add_typer(recipe_app, name="recipe")
app.add_typer(model_app, name="model")
app.add_typer(augment_app, name="augment")
console = Console()
err_console = Console(stderr=True)

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a recipe field: section.field=value")]


def _version(value: bool) -> None:
    if value:
        from sshpe import __version__

        console.print(f"sshpe {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Semi-supervised human pose estimation trainer."""


def _fail(msg: str, code: int = 2) -> None:
    _print_error(msg)
    raise typer.Exit(code)


def _user_errors():
    """Errors a user can fix are printed without a traceback."""
    from sshpe.checkpoint import CheckpointError
    from sshpe.distributed import EngineError
    from sshpe.evaluation.coco_ap import BackendUnavailable
    from sshpe.parallel import WorkerDied
    from sshpe.recipe import RecipeError

    return (RecipeError, EngineError, CheckpointError, BackendUnavailable, WorkerDied, FileNotFoundError, ValueError)


def _load(recipe: Path, overrides: list[str] | None):
    from sshpe.recipe import load_recipe

    return load_recipe(recipe, overrides or [])


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        _fail(f"--input-size {text!r}: write HEIGHTxWIDTH, e.g. 256x192")
    return h, w


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="output folder (COCO layout)")],
    train: Annotated[int, typer.Option(help="training images")] = 2000,
    val: Annotated[int, typer.Option(help="validation images")] = 300,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same bytes)")] = 0,
    workers: Annotated[int, typer.Option(help="parallel processes")] = 2,
    stats: Annotated[bool, typer.Option("--stats", help="only report the statistics of the dataset at OUT")] = False,
    format: Annotated[str, typer.Option(help="coco | mpii (HRNet annot/ layout) | aic (AI Challenger)")] = "coco",
) -> None:
    """Generate the built-in synthetic person-keypoint dataset (COCO format, or converted to MPII / AIC layout) and
    print how COCO-like its persons are."""
    from sshpe.synth import generate
    from sshpe.synth.native import FORMATS, generate_native
    from sshpe.synth.stats import check_bounds, file_stats, stats_table

    try:
        if format not in FORMATS:
            raise ValueError(f"--format {format!r}: choose one of {list(FORMATS)}")
        if stats:
            files = {s: out / "annotations" / f"person_keypoints_{s}.json" for s in ("train", "val")}
            by_split = {s: file_stats(f) for s, f in files.items() if f.is_file()}
            if not by_split:
                _fail(f"{out}/annotations has no person_keypoints_{{train,val}}.json; run `sshpe synth {out}` first")
        elif format == "coco":
            summary = generate(out, num_train=train, num_val=val, seed=seed, workers=workers)
            by_split = summary["stats"]
            console.print(f"wrote {out}: {summary['images']['train']} train + {summary['images']['val']} val images "
                          f"in {summary['seconds']:.1f} s ({summary['images_per_s']:.0f} images/s)")  # fmt: skip
        else:
            summary = generate_native(out, format, num_train=train, num_val=val, seed=seed, workers=workers)
            console.print(f"wrote {out}: {summary}")
            return
    except _user_errors() as e:
        _fail(str(e))
    console.print(stats_table(by_split))
    for split, st in by_split.items():
        missed = check_bounds(st) if st.get("persons") else ["no persons"]
        if missed:
            console.print(f"[yellow]{split}: outside COCO's bounds: {'; '.join(missed)}[/]")


@app.command()
def shard(
    source: Annotated[Path, typer.Argument(help="dataset root (synthetic, COCO 2017, MPII or AI Challenger layout)")],
    out: Annotated[Path, typer.Argument(help="local shard folder (manifest.json + tars); upload it for URLs")],
    input_size: Annotated[str, typer.Option(help="model input HEIGHTxWIDTH the canvases serve")] = "256x192",
    labeled: Annotated[Optional[int], typer.Option(help="first N valid train instances are labeled")] = None,
    unlabeled: Annotated[bool, typer.Option(help="write the unlabeled split")] = True,
    name: Annotated[Optional[str], typer.Option(help="dataset name in keys/file names")] = None,
    schema: Annotated[
        Optional[str],
        typer.Option(
            help="keypoint schema: coco17 | mpii16 | aic14 | union24 | a schema FILE; default: the layout's own "
            "(COCO format: read from the annotation file's categories[0])"
        ),
    ] = None,
    unlabeled_source: Annotated[
        Optional[Path],
        typer.Option(
            help="another dataset root whose train person boxes are the unlabeled split, labels dropped "
            "(e.g. AI Challenger for MPII)"
        ),
    ] = None,
    train_ann: Annotated[Optional[Path], typer.Option(help="override: train keypoint annotations")] = None,
    train_images: Annotated[Optional[Path], typer.Option(help="override: train images folder")] = None,
    val_ann: Annotated[Optional[Path], typer.Option(help="override: val keypoint annotations")] = None,
    val_images: Annotated[Optional[Path], typer.Option(help="override: val images folder")] = None,
    val_dets: Annotated[Optional[Path], typer.Option(help="val person detections (COCO results JSON)")] = None,
    unlabeled_info: Annotated[Optional[Path], typer.Option(help="image-info JSON of unlabeled images")] = None,
    unlabeled_images: Annotated[Optional[Path], typer.Option(help="unlabeled images folder")] = None,
    unlabeled_dets: Annotated[Optional[Path], typer.Option(help="person detections on unlabeled images")] = None,
    shard_size: Annotated[int, typer.Option(help="samples per tar")] = 1000,
    workers: Annotated[int, typer.Option(help="parallel encoding processes")] = 2,
    skip_invalid: Annotated[
        bool, typer.Option(help="skip invalid annotations and unusable images (counted in the manifest)")
    ] = False,
) -> None:
    """Write WebDataset shards of person canvases (labeled, unlabeled, val[, val_det]) and a manifest.

    OUT is replaced as a whole: afterwards it holds exactly the splits of this run, or, if the run fails or is
    killed, exactly what it held before."""
    from dataclasses import replace

    from sshpe.data.prepare import SourceFiles, find_sources, shard_dataset, with_overrides

    try:
        if re.match(r"^(pipe:|[A-Za-z][A-Za-z0-9+.-]+:/)", str(out)):
            raise ValueError(
                f"OUT {str(out)!r} looks like a URL or pipe: command; `sshpe shard` writes a local folder: write it "
                "there, then upload it whole and point data.shards at the upload (README: shards on object storage)"
            )
        if train_ann is not None and train_images is not None:
            src = SourceFiles(train_ann=train_ann, train_images=train_images)
        else:
            src = find_sources(source)
        src = with_overrides(
            src, train_ann=train_ann, train_images=train_images, val_ann=val_ann, val_images=val_images,
            val_dets=val_dets, unlabeled_info=unlabeled_info, unlabeled_images=unlabeled_images,
            unlabeled_dets=unlabeled_dets,
        )  # fmt: skip
        if unlabeled_source is not None:
            src = replace(src, unlabeled_source=find_sources(unlabeled_source))
        result = shard_dataset(
            src, out, dataset=name or source.resolve().name.replace(".", "_").replace("-", "_"),
            input_hw=_hw(input_size), schema=schema, labeled=labeled, unlabeled=unlabeled,
            shard_size=shard_size, workers=workers, skip_invalid=skip_invalid,
        )  # fmt: skip
    except _user_errors() as e:
        _fail(str(e))
    for split in result.written:
        entry = result.splits[split]
        skipped = entry["skipped"]
        note = f" (skipped {sum(skipped.values())}: {skipped})" if skipped else ""
        console.print(f"{split}: {entry['count']} samples in {len(entry['shards'])} shard(s){note}")
    if result.removed:
        console.print(f"removed split(s) of the previous manifest that this run did not write: {list(result.removed)}")
    console.print(f"manifest: {out / 'manifest.json'}")


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML")],
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default runs/<recipe name>)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the latest complete checkpoint in the run folder")] = True,
    resume_from: Annotated[Optional[Path], typer.Option(help="continue from this checkpoint folder")] = None,
    init_from: Annotated[
        Optional[Path],
        typer.Option(
            help="start from these weights (default: the recipe's model.init_from): a checkpoint folder or its "
            "student.safetensors (continuing its step count), or a model file from `sshpe export` / "
            "`sshpe import-weights`; fresh optimizer; a head with another keypoint count is re-initialised"
        ),
    ] = None,
) -> None:
    """Train a recipe (works unchanged under `accelerate launch` / `torchrun`); prints the final AP (or PCKh) table."""
    from sshpe.evaluation.coco_ap import stats_table
    from sshpe.loop import fit

    try:
        r = _load(recipe, set_)
        stats = fit(r, out or Path("runs") / r.name, resume=resume_from or resume, init_from=init_from)
    except _user_errors() as e:
        _fail(str(e))
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        from sshpe.export import read_metadata

        model = (out or Path("runs") / r.name) / "final" / "model.safetensors"
        step = read_metadata(model).get("step", "?")
        console.print(stats_table(stats, f"{r.name}: evaluation of split {r.data.val_split!r} at step {step}"))
        console.print(f"model: {model} (step {step})")


@app.command("eval")
def eval_(
    model: Annotated[Path, typer.Argument(help="exported model.safetensors or a run folder")],
    recipe: Annotated[Optional[Path], typer.Option(help="recipe (default: the run folder's recipe.yaml)")] = None,
    set_: SetOpt = None,
    split: Annotated[Optional[str], typer.Option(help="manifest split to evaluate (default data.val_split)")] = None,
    results: Annotated[Optional[Path], typer.Option(help="write official-format results JSON here")] = None,
) -> None:
    """COCO keypoint AP (or, for MPII shards, the PCKh table) of a model on validation shards, with the reference's
    post-processing."""
    from sshpe.evaluation.coco_ap import stats_table
    from sshpe.runner import evaluate_model

    try:
        stats, used = evaluate_model(model, recipe, set_ or [], split, results)
    except _user_errors() as e:
        _fail(str(e))
    console.print(stats_table(stats, f"{used}"))


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="run folder")],
    out: Annotated[
        Optional[Path], typer.Option(help="output .safetensors (default RUN/export/model.safetensors)")
    ] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="checkpoint folder (default: latest complete)")] = None,
    network: Annotated[
        str,
        typer.Option(
            help="auto (what the run evaluates) | student | teacher | student_a | student_b | student_c | "
            "ensemble (dual: both networks, heatmaps averaged)"
        ),
    ] = "auto",
) -> None:
    """Write a checkpoint's network as model.safetensors with metadata."""
    from sshpe.runner import export_run

    try:
        path = export_run(run, out, checkpoint, network)
    except _user_errors() as e:
        _fail(str(e))
    console.print(f"wrote {path}")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="exported model.safetensors or a run folder")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    out: Annotated[Path, typer.Option(help="output folder for keypoints.json and overlays")] = Path("predictions"),
    boxes: Annotated[
        Optional[Path],
        typer.Option(
            help="JSON person boxes: COCO detection results (image_id, bbox x,y,w,h px, score; with --image-info) "
            "or entries with file_name, bbox, score"
        ),
    ] = None,
    image_info: Annotated[
        Optional[Path], typer.Option(help="COCO file whose `images` name the image_ids of --boxes")
    ] = None,
    whole_image: Annotated[
        bool, typer.Option(help="images that --boxes does not name use the whole image as the box (else an error)")
    ] = False,
    score_thr: Annotated[float, typer.Option(help="leave out boxes scored below this")] = 0.0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (auto: the GPU when one is visible)")] = "auto",
    batch_size: Annotated[int, typer.Option(help="person crops per forward pass")] = 32,
    overlay: Annotated[bool, typer.Option(help="also write images with the skeleton, box and scores drawn")] = True,
) -> None:
    """Keypoints of the people in images (the whole image is the person box unless --boxes is given)."""
    from sshpe.runner import predict_images

    try:
        res = predict_images(
            model, images, out, boxes, overlay, image_info=image_info, whole_image=whole_image, score_thr=score_thr,
            device=device, batch_size=batch_size,
        )  # fmt: skip
    except _user_errors() as e:
        _fail(str(e))
    for note in res.notes:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"wrote {res.path}: {res.people} people in {res.images} images")


@recipe_app.command("check")
def recipe_check(recipes: Annotated[list[Path], typer.Argument(help="recipe files")], set_: SetOpt = None) -> None:
    """Validate recipes; every problem is listed at once."""
    bad = 0
    for path in recipes:
        try:
            _load(path, set_)
            console.print(f"[green]ok[/] {path}")
        except _user_errors() as e:
            bad += 1
            err_console.print(str(e), highlight=False, soft_wrap=True, markup=False)
    if bad:
        raise typer.Exit(2)


@recipe_app.command("show")
def recipe_show(recipe: Annotated[Path, typer.Argument()], set_: SetOpt = None) -> None:
    """Print the resolved recipe (defaults filled in, overrides applied)."""
    from sshpe.recipe import dump_recipe

    try:
        console.print(dump_recipe(_load(recipe, set_)), highlight=False, soft_wrap=True)
    except _user_errors() as e:
        _fail(str(e))


@recipe_app.command("schema")
def recipe_schema() -> None:
    """JSON Schema of recipes (for editor completion and validation)."""
    import json

    from sshpe.recipe import Recipe

    sys.stdout.write(json.dumps(Recipe.model_json_schema(by_alias=True), indent=2) + "\n")


@model_app.command("info")
def model_info(
    target: Annotated[str, typer.Argument(help="recipe YAML or architecture name")],
    input_size: Annotated[str, typer.Option(help="input HEIGHTxWIDTH when TARGET is a name")] = "256x192",
    joints: Annotated[int, typer.Option(help="keypoints when TARGET is a name")] = 17,
) -> None:
    """Parameters, MACs, HRNet-convention GFLOPs, stride and per-stage feature shapes."""
    from sshpe.models import build_model
    from sshpe.models.info import format_info
    from sshpe.models.info import model_info as info

    try:
        if target.endswith((".yaml", ".yml")):
            r = _load(Path(target), [])
            m = r.model
            net = build_model(
                m.arch, r.schema.num_joints, head_channels=tuple(m.head_channels), head_kernel=m.head_kernel
            )
            hw = tuple(r.data.input_size)
        else:
            net, hw = build_model(target, joints), _hw(input_size)
    except _user_errors() as e:
        _fail(str(e))
    console.print(format_info(info(net, hw)))


@augment_app.command("preview")
def augment_preview(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML (its shards are read)")],
    out: Annotated[Path, typer.Option(help="output PNG")] = Path("preview.png"),
    n: Annotated[int, typer.Option(help="samples (rows); a multiple of the MUM group when MUM is on")] = 4,
    seed: Annotated[int, typer.Option(help="random seed of the draws")] = 0,
    set_: SetOpt = None,
) -> None:
    """PNG grid: the easy view and every hard path for a few samples, with the target joints drawn."""
    from sshpe.preview import render_preview

    try:
        path = render_preview(_load(recipe, set_), out, n=n, seed=seed)
    except _user_errors() as e:
        _fail(str(e))
    console.print(f"wrote {path}")


@app.command("import-weights")
def import_weights(
    checkpoint: Annotated[Path, typer.Argument(help="official SimpleBaseline/HRNet pose .pth (or a reference repo's)")],
    recipe: Annotated[Path, typer.Argument(help="recipe describing the network (arch, schema, input size)")],
    out: Annotated[Path, typer.Option(help="output .safetensors")] = Path("imported.safetensors"),
    net: Annotated[
        Optional[str], typer.Option(help="which network of a multi-network checkpoint (e.g. resnet2)")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Convert an official pose checkpoint (read with weights_only=True) to sshpe safetensors with metadata."""
    from sshpe.export import export_model
    from sshpe.models.official import import_official

    try:
        r = _load(recipe, set_)
        m = r.model
        model, report = import_official(
            checkpoint, m.arch, r.schema.num_joints, net=net, head_channels=tuple(m.head_channels),
            head_kernel=m.head_kernel,
        )  # fmt: skip
        path = export_model(model, out, r, f"imported:{checkpoint.name}")
    except _user_errors() as e:
        _fail(str(e))
    console.print(f"imported {report.num_tensors} tensors ({report.container}, prefix {report.prefix!r}) -> {path}")
    if report.filled:
        console.print(f"filled from a fresh model (absent in old checkpoints): {report.filled}")


def main() -> None:
    """The `sshpe` entry point: operating-system errors a user can fix (full disk, read-only or missing folders)
    end the command with one line naming the path and the fix instead of a traceback."""
    from sshpe.errors import describe_os_error

    try:
        app()
    except OSError as e:
        what = " ".join(sys.argv[1:3])
        _print_error(describe_os_error(e, f"running `sshpe {what}`") if e.errno is not None else str(e))
        sys.exit(2)


def _print_error(msg: str) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
