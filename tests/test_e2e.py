"""End to end on CPU: synth -> shard -> fit -> resume -> eval -> export, with exact files and log lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import smoke_recipe
from safetensors.torch import load_file

from sshpe.checkpoint import COMPLETE, complete_checkpoints
from sshpe.export import load_exported, read_metadata
from sshpe.loop import fit
from sshpe.nets import build_nets

STATS = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_fit_writes_run_folder(smoke_shards, tmp_path):
    recipe = smoke_recipe(smoke_shards)
    run = tmp_path / "run"
    stats = fit(recipe, run)
    assert set(stats) == set(STATS) and all(0.0 <= v <= 1.0 or v == -1.0 for v in stats.values())
    assert (run / "recipe.yaml").is_file()
    assert list((run / "tb").rglob("events.out.tfevents.*"))  # TensorBoard via accelerate (a test extra)
    steps = [c for c, _ in complete_checkpoints(run / "checkpoints")]
    assert steps == [2, 4, 6]
    for name in ("model.safetensors", "optimizer.bin", "trainer_state.json", COMPLETE):
        assert (run / "checkpoints" / "step-000006" / name).is_file()
    assert not list((run / "checkpoints").glob("*.tmp"))
    logs = _metrics(run)
    train = [r for r in logs if "train/loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert all(r["train/loss"] > 0 and r["lr"] == recipe.optim.lr for r in train)
    final = [r for r in logs if "val/AP" in r]
    assert len(final) == 1 and final[0]["step"] == 6 and final[0]["eval_network"] == "student"
    assert all(r["time"] <= logs[-1]["time"] for r in logs)  # unix timestamps, in order
    log = (run / "train.log").read_text().splitlines()  # timestamped, also with the progress bar off
    assert [line.split("  ")[0].split(" ", 2)[2] for line in log if " step " in line and "eval" not in line] == [
        "step 2/6", "step 4/6", "step 6/6"
    ]  # fmt: skip
    assert f"eval step 6 (student): AP {stats['AP']:.4g}" in log[-1]
    results = json.loads((run / "final" / "results.json").read_text())
    assert results and set(results[0]) == {"image_id", "category_id", "keypoints", "score", "center", "scale", "bbox"}
    assert len(results[0]["keypoints"]) == 51
    # bbox is the annotation's own box, as SHP/MA write it (reference §10.19), not the cleaned crop box
    gt = json.loads(Path(json.loads((smoke_shards / "manifest.json").read_text())["sources"]["val_annotations"]
                         ["path"]).read_text())  # fmt: skip
    gt_boxes = {tuple(a["bbox"]) for a in gt["annotations"]}
    assert all(tuple(r["bbox"]) in gt_boxes for r in results)
    meta = read_metadata(run / "final" / "model.safetensors")
    assert meta["arch"] == "test_resnet" and meta["input_size"] == [64, 64] and meta["schema"]["name"] == "coco17"
    assert meta["recipe_hash"] == recipe.hash()


def test_resume_is_exact(smoke_shards, tmp_path):
    """A run stopped at step 4 and resumed reaches the same weights as an uninterrupted run (bitwise on CPU)."""
    recipe = smoke_recipe(smoke_shards, "train.eval_every=0")
    fit(recipe, tmp_path / "a")
    fit(smoke_recipe(smoke_shards, "train.duration=4"), tmp_path / "b")
    fit(recipe, tmp_path / "b")  # auto-resume from b/checkpoints/step-000004
    a = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed = [r["step"] for r in _metrics(tmp_path / "b") if "train/loss" in r]
    assert resumed == [2, 4, 6]


def test_device_decode_trains_like_worker_decode(smoke_shards, tmp_path):
    """`data.decode: device` (workers hand JPEG bytes over, the training device decodes the batch) gives the workers'
    pixels, so the same weights and scores (bitwise on CPU)."""
    stats = {m: fit(smoke_recipe(smoke_shards, "train.eval_every=0", f"data.decode={m}"), tmp_path / m)
             for m in ("worker", "device")}  # fmt: skip
    a = load_file(str(tmp_path / "worker" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "device" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert stats["worker"] == stats["device"]


def test_torn_checkpoint_is_never_picked(smoke_shards, tmp_path):
    run = tmp_path / "run"
    fit(smoke_recipe(smoke_shards, "train.duration=2"), run)
    torn = run / "checkpoints" / "step-000004"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"half")
    (run / "checkpoints" / "step-000006.tmp").mkdir()
    assert [s for s, _ in complete_checkpoints(run / "checkpoints")] == [2]


def test_export_eval_predict_cli(synth_root, smoke_shards, tmp_path):
    recipe = smoke_recipe(smoke_shards)
    run = tmp_path / "run"
    fit(recipe, run)
    out = tmp_path / "exported.safetensors"
    cli = [sys.executable, "-m", "sshpe._cli.app"]
    res = subprocess.run(cli + ["export", str(run), "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    net, meta = load_exported(out)
    nets = build_nets(recipe)
    nets.load_state_dict(load_file(str(run / "checkpoints" / "step-000006" / "model.safetensors")))
    nets.eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(net(x), nets.nets[0](x))
    res = subprocess.run(cli + ["eval", str(run)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "AP50" in res.stdout
    ap_cli = json.loads((run / "final" / "stats.json").read_text())["AP"]
    assert f"{ap_cli:.3f}"[:4] in res.stdout or ap_cli == 0.0
    # predict on whole images and on detector boxes
    images = sorted((synth_root / "images" / "val").glob("*.jpg"))[:2]
    dets = json.loads((synth_root / "annotations" / "person_detections_val.json").read_text())
    gt = json.loads((synth_root / "annotations" / "person_keypoints_val.json").read_text())
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    boxes = [d | {"file_name": names[d["image_id"]]} for d in dets]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    res = subprocess.run(cli + ["predict", str(out), *map(str, images), "--out", str(tmp_path / "pred"),
                                "--boxes", str(tmp_path / "boxes.json")], capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    pred = json.loads((tmp_path / "pred" / "keypoints.json").read_text())
    assert pred["keypoint_names"][0] == "nose" and len(pred["images"]) == 2
    n_boxes = sum(b["file_name"] == images[0].name for b in boxes)
    assert len(pred["images"][0]["people"]) == n_boxes > 0
    assert all(len(p["keypoints"]) == 17 for p in pred["images"][0]["people"])
    assert (tmp_path / "pred" / f"{images[0].stem}_pose.jpg").is_file()


def test_recipe_pointing_at_missing_shards(tmp_path):
    recipe = smoke_recipe(tmp_path / "nowhere")
    res = subprocess.run(
        [sys.executable, "-m", "sshpe._cli.app", "train", str(Path(__file__).parents[1] / "recipes" / "_smoke.yaml"),
         "--set", f"data.shards={tmp_path / 'nowhere'}", "--out", str(tmp_path / "run")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 2
    assert "manifest.json does not exist" in res.stderr and "sshpe shard" in res.stderr
    assert "Traceback" not in res.stderr
    assert Path(recipe.data.shards) == tmp_path / "nowhere"


def test_non_finite_loss_names_the_window(smoke_shards, tmp_path, monkeypatch):
    import sshpe.loop as loop

    real, calls = loop.train_step, {"n": 0}

    def diverging(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(loop, "train_step", diverging)
    with pytest.raises(loop.TrainingDiverged) as err:
        fit(smoke_recipe(smoke_shards), tmp_path / "run")
    msg = str(err.value)
    assert "non-finite loss nan at step 5, in the window since step 4" in msg
    assert "last good checkpoint: " in msg and msg.split("last good checkpoint: ")[1].startswith(str(tmp_path))
    assert "step-000004" in msg


def test_console_gets_plain_lines_when_stdout_is_not_a_terminal(smoke_shards, tmp_path):
    """Cluster logs: no progress-bar control codes, one line per logging period with loss, lr, speed and ETA."""
    recipe = Path(__file__).parents[1] / "recipes" / "_smoke.yaml"
    cmd = [sys.executable, "-m", "sshpe._cli.app", "train", str(recipe), "--set", f"data.shards={smoke_shards}",
           "--set", "train.progress=true", "--out", str(tmp_path / "run")]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("step ")]
    assert [line.split("  ")[0] for line in lines] == ["step 2/6", "step 4/6", "step 6/6"]
    assert all("samples/s" in line and "ETA" in line and "lr " in line for line in lines)
    assert "\x1b[" not in res.stdout.split("eval step")[0]  # no terminal control codes before the final table
