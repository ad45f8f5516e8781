"""Pseudo-label quality: the unlabeled split keeps the dropped ground truth in a field training never reads, the
loop logs the teachers' PCK against it, and scrambling it changes nothing but that metric."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smoke_recipe
from safetensors.torch import load_file

import sshpe.data.prepare as prepare
from sshpe.data.prepare import find_sources, shard_dataset
from sshpe.data.streams import make_train_loader
from sshpe.loop import fit
from sshpe.pseudo_labels import PseudoLabels, pseudo_label_pck
from sshpe.schema import COCO17, get_schema, joint_map
from sshpe.step import remap_labels
from sshpe.views import View


def _records(shards: Path, split: str) -> dict[str, dict]:
    out = {}
    for tar_path in sorted(shards.glob(f"*-{split}-*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    rec = json.loads(tar.extractfile(m).read())
                    out[rec["key"]] = rec
    return out


def test_unlabeled_records_keep_the_dropped_labels_apart(smoke_shards):
    labeled, unlabeled = _records(smoke_shards, "labeled"), _records(smoke_shards, "unlabeled")
    assert unlabeled and set(unlabeled) == set(labeled)  # the reference protocol: every train instance, twice
    for key, rec in unlabeled.items():
        assert np.all(np.asarray(rec["keypoints"]) == 0) and rec["num_keypoints"] == 0
        assert np.allclose(rec["hidden_keypoints"], labeled[key]["keypoints"])
        assert "hidden_keypoints" not in labeled[key]
    assert all("hidden_keypoints" not in r for r in _records(smoke_shards, "val_det").values())
    batch = next(iter(make_train_loader(smoke_shards, "unlabeled", batch_size=4, seed=0, rank=0, world_size=1,
                                        num_workers=0)))  # fmt: skip
    assert batch["hidden_kpts"].shape == (4, 17, 2) and batch["hidden_vis"].shape == (4, 17)
    assert batch["hidden_vis"].max() > 0 and torch.all(batch["vis"] == 0)


def _view(b: int, k: int, h: int = 64, w: int = 48, flip: list[bool] | None = None) -> View:
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64).expand(b, 2, 3)
    flips = torch.tensor(flip if flip is not None else [False] * b)
    return View(img=torch.zeros(b, 3, h, w), kpts=torch.zeros(b, k, 2), vis=torch.zeros(b, k), canvas_to_crop=eye,
                flip=flips)  # fmt: skip


def test_pck_counts_hits_within_five_percent_of_the_crop_height():
    gt = torch.full((1, 17, 2), 20.0)
    vis = torch.full((1, 17), 2.0)
    vis[0, 16] = 0  # unlabelled: not counted
    gt[0, 15] = torch.tensor([100.0, 20.0])  # outside the 48-px-wide crop: not counted
    pred = gt.clone()
    pred[0, :5, 0] += 3.19  # within 0.05 * 64 = 3.2 px
    pred[0, 5:8, 1] += 3.3  # just outside
    pseudo = PseudoLabels(joints=[pred, gt.clone()], view=_view(1, 17))
    out = pseudo_label_pck(pseudo, {"hidden_kpts": gt, "hidden_vis": vis}, COCO17)
    assert out["pseudo_pck_a"] == pytest.approx(12 / 15) and out["pseudo_pck_b"] == 1.0
    assert out["pseudo_pck"] == pytest.approx((12 / 15 + 1) / 2)
    assert pseudo_label_pck(pseudo, {"kpts": gt}, COCO17) == {}


def test_pck_swaps_left_and_right_of_flipped_views_and_maps_union24():
    gt = torch.rand(2, 17, 2) * 40
    vis = torch.full((2, 17), 2.0)
    flip_idx = COCO17.flip_index()
    pred = gt.clone()
    pred[1] = gt[1, flip_idx]  # the flipped sample's channels are swapped in the view, as make_view does
    out = pseudo_label_pck(PseudoLabels([pred], _view(2, 17, flip=[False, True])), {"hidden_kpts": gt,
                           "hidden_vis": vis}, COCO17)  # fmt: skip
    assert out == {"pseudo_pck": 1.0}
    union = get_schema("union24")  # the loop maps hidden labels into the model's channels with the batch's labels
    batch = remap_labels({"kpts": gt[:1], "vis": vis[:1], "hidden_kpts": gt[:1], "hidden_vis": vis[:1]},
                         joint_map(COCO17, union))  # fmt: skip
    assert batch["hidden_kpts"].shape == (1, 24, 2) and torch.equal(batch["hidden_kpts"], batch["kpts"])
    out = pseudo_label_pck(PseudoLabels([batch["hidden_kpts"].clone()], _view(1, 24)), batch, union)
    assert out == {"pseudo_pck": 1.0}


@pytest.fixture(scope="module")
def scrambled_shards(synth_root, tmp_path_factory, smoke_shards) -> Path:
    """The smoke shards again, through the real writer, with every hidden label replaced by noise."""
    real = prepare.load_instances

    def scrambled(*args, **kwargs):
        insts = real(*args, **kwargs)
        rng = np.random.default_rng(0)
        return [i if i.hidden_keypoints is None else type(i)(**{**i.__dict__, "hidden_keypoints": np.concatenate(
            [rng.uniform(0, 100, (17, 2)), np.full((17, 1), 2.0)], 1)}) for i in insts]  # fmt: skip

    out = tmp_path_factory.mktemp("scrambled")
    mp = pytest.MonkeyPatch()
    mp.setattr(prepare, "load_instances", scrambled)
    try:
        shard_dataset(find_sources(synth_root), out, dataset="synth", input_hw=(64, 64), shard_size=8,
                      progress=False)  # fmt: skip
    finally:
        mp.undo()
    return out


@pytest.mark.parametrize("teacher", ["single", "dual"])
def test_hidden_labels_cannot_influence_training(smoke_shards, scrambled_shards, tmp_path, teacher):
    """Identical losses and weights with the hidden labels scrambled; only the logged pseudo-label PCK differs."""
    sets = [f"teacher.kind={teacher}", "train.eval_every=0", "train.ckpt_every=0", "train.duration=4"]
    runs = {}
    for name, shards in (("real", smoke_shards), ("scrambled", scrambled_shards)):
        fit(smoke_recipe(shards, *sets), tmp_path / name)
        logs = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = (
            [r for r in logs if "train/loss" in r],
            load_file(str(tmp_path / name / "checkpoints" / "step-000004" / "student.safetensors")),
        )
    (real_logs, real_w), (scr_logs, scr_w) = runs["real"], runs["scrambled"]
    losses = ("train/loss", "train/loss_sup", "train/loss_unsup")
    assert [[r[k] for k in losses] for r in real_logs] == [[r[k] for k in losses] for r in scr_logs]
    assert real_w.keys() == scr_w.keys() and all(torch.equal(real_w[k], scr_w[k]) for k in real_w)
    assert all("train/pseudo_pck" in r for r in real_logs + scr_logs)
    if teacher == "dual":
        assert all("train/pseudo_pck_a" in r and "train/pseudo_pck_b" in r for r in real_logs)
    assert [r["train/pseudo_pck"] for r in real_logs] != [r["train/pseudo_pck"] for r in scr_logs]
