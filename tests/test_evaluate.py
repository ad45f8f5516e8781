"""COCO keypoint evaluation: real pycocotools on a small ground-truth file, rescoring, OKS-NMS, frames, I/O."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from rich.console import Console

from sshpe import geometry
from sshpe.evaluation.coco_ap import (
    STAT_KEYS,
    build_results,
    coco_keypoint_eval,
    heatmap_to_image,
    oks_iou,
    oks_nms,
    rescore,
    stats_table,
    write_results,
)
from sshpe.schema import AIC14, COCO17, COCO_NAMES, COCO_SIGMAS, COCO_SKELETON, MPII16, UNION24, eval_channels

SIGMAS = np.array(COCO_SIGMAS)

# A standing person in a unit box (x right, y down), COCO-17 order.
_TEMPLATE = np.array([
    [0.50, 0.08], [0.54, 0.06], [0.46, 0.06], [0.58, 0.08], [0.42, 0.08], [0.68, 0.22], [0.32, 0.22],
    [0.75, 0.38], [0.25, 0.38], [0.78, 0.52], [0.22, 0.52], [0.62, 0.55], [0.38, 0.55], [0.63, 0.76],
    [0.37, 0.76], [0.64, 0.96], [0.36, 0.96],
])  # fmt: skip


def _person(box: tuple[float, float, float, float], hidden: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (17, 2) image px and COCO visibility (17,) of a template person filling `box`."""
    x, y, w, h = box
    kpts = _TEMPLATE * np.array([w, h]) + np.array([x, y])
    vis = np.full(17, 2)
    vis[list(hidden)] = 0
    kpts[list(hidden)] = 0.0
    return kpts, vis


# image id -> person boxes (x, y, w, h); image 4 has nobody, image 3 has a medium-sized person.
_IMAGES = {1: [(40.0, 60.0, 120.0, 300.0), (400.0, 50.0, 140.0, 330.0)], 2: [(200.0, 100.0, 150.0, 350.0)],
           3: [(300.0, 200.0, 30.0, 70.0)], 4: []}  # fmt: skip
_HIDDEN = {(1, 1): (3, 4, 15), (3, 0): (1, 2)}


@pytest.fixture
def gt_file(tmp_path):
    images, anns = [], []
    for img_id, boxes in _IMAGES.items():
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": 640, "height": 480})
        for j, box in enumerate(boxes):
            kpts, vis = _person(box, _HIDDEN.get((img_id, j), ()))
            flat = np.concatenate([kpts, vis[:, None]], 1).reshape(-1).tolist()
            anns.append({
                "id": len(anns) + 1, "image_id": img_id, "category_id": 1, "iscrowd": 0, "bbox": list(box),
                "area": box[2] * box[3] * 0.7, "keypoints": flat, "num_keypoints": int((vis > 0).sum()),
            })  # fmt: skip
    cats = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_NAMES),
             "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON]}]  # fmt: skip
    path = tmp_path / "person_keypoints_val.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _instances(noise_px: float = 0.0, seed: int = 0):
    """GT-box instances: keypoints (N, 17, 2), maxvals, image ids, scales, box scores."""
    rng = np.random.default_rng(seed)
    kpts, ids, scales = [], [], []
    for img_id, boxes in _IMAGES.items():
        for j, box in enumerate(boxes):
            kpts.append(_person(box, _HIDDEN.get((img_id, j), ()))[0])
            ids.append(img_id)
            scales.append(geometry.box_to_center_scale(box, 0.75)[1])
    kpts = np.stack(kpts) + rng.normal(0.0, noise_px, (len(ids), 17, 2))
    maxvals = rng.uniform(0.5, 1.0, kpts.shape[:2])
    return kpts, maxvals, np.array(ids), np.stack(scales), np.ones(len(ids))


# ---------------------------------------------------------------------------------------------------------------
# COCOeval end to end
# ---------------------------------------------------------------------------------------------------------------


def test_perfect_predictions_score_ap_one_and_noise_lowers_it(gt_file, caplog):
    results = build_results(*_instances(), schema=COCO17)
    assert len(results) == 4 and {r["category_id"] for r in results} == {1}
    with caplog.at_level(logging.INFO, logger="sshpe.evaluation.coco_ap"):
        perfect = coco_keypoint_eval(gt_file, results)
    assert list(perfect) == list(STAT_KEYS)
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AR"] == pytest.approx(1.0)
    assert perfect["APm"] == pytest.approx(1.0) and perfect["APl"] == pytest.approx(1.0)
    assert "Average Precision" in caplog.text  # pycocotools' summary is captured, not lost
    small = coco_keypoint_eval(gt_file, build_results(*_instances(noise_px=3.0), schema=COCO17))
    large = coco_keypoint_eval(gt_file, build_results(*_instances(noise_px=12.0), schema=COCO17))
    assert large["AP"] < small["AP"] < perfect["AP"]


def test_union24_predictions_map_to_coco_order(gt_file):
    kpts17, maxvals17, ids, scales, box_scores = _instances()
    union = list(COCO17.union)  # union24 channel of each COCO joint
    kpts24 = np.full((len(ids), 24, 2), -999.0)  # dummy channels hold junk that must not leak into the results
    maxvals24 = np.full((len(ids), 24), 0.99)
    kpts24[:, union] = kpts17
    maxvals24[:, union] = maxvals17
    results = build_results(kpts24, maxvals24, ids, scales, box_scores, UNION24, data_schema=COCO17)
    direct = build_results(kpts17, maxvals17, ids, scales, box_scores, COCO17)
    assert [len(r["keypoints"]) for r in results] == [51] * 4
    assert results == direct  # same order, same rescoring (the dummies' 0.99 do not count)
    assert coco_keypoint_eval(gt_file, results)["AP"] == pytest.approx(1.0)


def test_eval_channels_map_the_ground_truth_joints_to_model_channels():
    # union24 head: each evaluated joint comes from the union channel of the same name (reference §1.1)
    for data in (COCO17, MPII16, AIC14):
        channels = eval_channels(data, UNION24)
        union_names = [UNION24.names[c] for c in channels]
        assert union_names == [n if n != "pelvis" else "root" for n in data.names]
    assert eval_channels(COCO17, COCO17) == list(range(17))
    assert eval_channels(MPII16, MPII16) == list(range(16))
    with pytest.raises(ValueError, match="no joint mapping from the data's keypoint schema 'coco17'"):
        eval_channels(COCO17, MPII16)


def test_results_carry_the_reference_box_fields_and_pycocotools_takes_the_area_from_bbox(gt_file):
    """SHP/MA write center, scale and bbox into each result; pycocotools' loadRes then uses the bbox area (§10.19)."""
    from pycocotools.coco import COCO

    kpts, maxvals, ids, scales, box_scores = _instances()
    centers = np.stack([geometry.box_to_center_scale(b, 0.75)[0] for bs in _IMAGES.values() for b in bs])
    boxes = np.array([b for bs in _IMAGES.values() for b in bs])
    results = build_results(kpts, maxvals, ids, scales, box_scores, COCO17, centers=centers, boxes=boxes)
    assert set(results[0]) == {"image_id", "category_id", "keypoints", "score", "center", "scale", "bbox"}
    by_box = {tuple(r["bbox"]): r for r in results}
    for box, center, scale in zip(boxes, centers, scales):
        assert by_box[tuple(box)]["center"] == list(center) and by_box[tuple(box)]["scale"] == list(scale)
    dt = COCO(str(gt_file)).loadRes([dict(r) for r in results])
    assert sorted(a["area"] for a in dt.anns.values()) == sorted(b[2] * b[3] for b in boxes)
    plain = COCO(str(gt_file)).loadRes([dict(r) for r in build_results(kpts, maxvals, ids, scales, box_scores, COCO17)])
    assert sorted(a["area"] for a in plain.anns.values()) != sorted(b[2] * b[3] for b in boxes)  # keypoint extent


def test_eval_errors_and_empty_results(gt_file, tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        coco_keypoint_eval(tmp_path / "missing.json", [])
    with caplog.at_level(logging.WARNING, logger="sshpe.evaluation.coco_ap"):
        stats = coco_keypoint_eval(gt_file, [])
    assert stats == {k: 0.0 for k in STAT_KEYS} and "no predictions" in caplog.text
    results = build_results(*_instances(), schema=COCO17)
    with pytest.raises(ValueError, match="not in"):
        coco_keypoint_eval(gt_file, [dict(results[0], image_id=99)])
    with pytest.raises(ValueError, match="sigmas have 16"):
        coco_keypoint_eval(gt_file, results, sigmas=np.full(16, 0.05))
    before = json.dumps(results)
    coco_keypoint_eval(gt_file, results)
    assert json.dumps(results) == before  # pycocotools' loadRes does not mutate the caller's results


# ---------------------------------------------------------------------------------------------------------------
# Rescoring and OKS-NMS
# ---------------------------------------------------------------------------------------------------------------


def _hrnet_rescore(maxvals, box_scores, thr):
    out = []
    for vals, box_score in zip(maxvals, box_scores):
        kpt_score, valid_num = 0.0, 0
        for t_s in vals:
            if t_s > thr:
                kpt_score, valid_num = kpt_score + t_s, valid_num + 1
        out.append((kpt_score / valid_num if valid_num else kpt_score) * box_score)
    return np.array(out)


def test_rescore_matches_hrnet_loop():
    rng = np.random.default_rng(1)
    maxvals = rng.uniform(0.0, 1.0, (6, 17))
    maxvals[2] = 0.1  # nothing above the threshold -> score 0
    box_scores = rng.uniform(0.3, 1.0, 6)
    got = rescore(maxvals, box_scores, 0.2)
    np.testing.assert_allclose(got, _hrnet_rescore(maxvals, box_scores, 0.2))
    assert got[2] == 0.0
    np.testing.assert_allclose(rescore(maxvals[:1], [1.0], 0.2), maxvals[0][maxvals[0] > 0.2].mean())


def _hrnet_oks_iou(g, d, a_g, a_d, sigmas):
    variances = (sigmas * 2) ** 2
    ious = np.zeros(d.shape[0])
    for n in range(d.shape[0]):
        dx, dy = d[n, :, 0] - g[:, 0], d[n, :, 1] - g[:, 1]
        e = (dx**2 + dy**2) / variances / ((a_g + a_d[n]) / 2 + np.spacing(1)) / 2
        ious[n] = np.sum(np.exp(-e)) / e.shape[0]
    return ious


def test_oks_iou_matches_hrnet_loop_and_vis_threshold():
    rng = np.random.default_rng(2)
    g = np.concatenate([rng.uniform(0, 300, (17, 2)), rng.uniform(0, 1, (17, 1))], 1)
    d = g[None] + np.concatenate([rng.normal(0, 10, (5, 17, 2)), np.zeros((5, 17, 1))], 2)
    areas = rng.uniform(5e3, 5e4, 5)
    np.testing.assert_allclose(oks_iou(g, d, 2e4, areas, SIGMAS), _hrnet_oks_iou(g, d, 2e4, areas, SIGMAS))
    d[:, :, 2] = 1.0
    masked = oks_iou(g, d, 2e4, areas, SIGMAS, vis_thr=0.5)
    seen = g[:, 2] > 0.5
    np.testing.assert_allclose(masked, _hrnet_oks_iou(g[seen], d[:, seen], 2e4, areas, SIGMAS[seen]))


def test_oks_nms_removes_duplicate_keeps_distinct_people():
    a, _ = _person((40.0, 60.0, 120.0, 300.0))
    b, _ = _person((400.0, 50.0, 140.0, 330.0))
    dup = a + np.random.default_rng(3).normal(0, 0.5, a.shape)
    kpts = np.stack([np.concatenate([p, np.ones((17, 1))], 1) for p in (dup, b, a)])
    areas = np.array([300.0 * 400.0, 330.0 * 440.0, 300.0 * 400.0])
    scores = np.array([0.7, 0.8, 0.9])
    assert oks_nms(kpts, scores, areas, SIGMAS, thr=0.9) == [2, 1]
    assert oks_nms(kpts, scores, areas, SIGMAS, thr=1.0) == [2, 1, 0]  # nothing exceeds OKS 1
    assert oks_nms(kpts[:0], scores[:0], areas[:0], SIGMAS) == []
    # Through build_results: a duplicated detection in image 1 is suppressed, the other images are untouched.
    kpts17, maxvals, ids, scales, box_scores = _instances()
    results = build_results(
        np.concatenate([kpts17, kpts17[:1] + 0.5]), np.concatenate([maxvals, maxvals[:1] * 0.9]),
        np.append(ids, ids[0]), np.concatenate([scales, scales[:1]]), np.append(box_scores, 1.0), COCO17,
    )  # fmt: skip
    assert [r["image_id"] for r in results] == [1, 1, 2, 3]
    assert build_results(*_instances(), schema=COCO17, oks_thr=0.9) == build_results(*_instances(), schema=COCO17)


# ---------------------------------------------------------------------------------------------------------------
# Frames and I/O
# ---------------------------------------------------------------------------------------------------------------


def test_heatmap_to_image_inverts_the_forward_crop_map():
    gen = torch.Generator().manual_seed(4)
    b = 5
    center = (torch.rand(b, 2, generator=gen, dtype=torch.float64) * 400 + 100).numpy()
    scale = (torch.rand(b, 2, generator=gen, dtype=torch.float64) * 2 + 0.3).numpy()
    kpts_img = torch.rand(b, 17, 2, generator=gen, dtype=torch.float64) * 600
    img_to_hm = geometry.crop_matrix(torch.from_numpy(center), torch.from_numpy(scale[:, 0]), torch.zeros(b), (48, 64))
    kpts_hm = geometry.apply_affine(img_to_hm, kpts_img)
    back = heatmap_to_image(kpts_hm.float(), center, scale, (48, 64))
    assert back.dtype == torch.float64
    torch.testing.assert_close(back, kpts_img, atol=1e-3, rtol=0)  # float32 heatmap coordinates
    torch.testing.assert_close(heatmap_to_image(kpts_hm, center, scale, (48, 64)), kpts_img, atol=1e-9, rtol=0)
    # The heatmap centre (w/2, h/2) is the crop centre; one heatmap px is 200 s_x / 48 image px.
    mid = heatmap_to_image(torch.tensor([[[24.0, 32.0], [25.0, 32.0]]] * b), center, scale, (48, 64))
    np.testing.assert_allclose(mid[:, 0].numpy(), center)
    np.testing.assert_allclose((mid[:, 1, 0] - mid[:, 0, 0]).numpy(), 200 * scale[:, 0] / 48)


def test_write_results_is_atomic_json(tmp_path):
    results = build_results(*_instances(), schema=COCO17)
    path = tmp_path / "eval" / "results.json"
    write_results(path, results)
    assert json.loads(path.read_text()) == results
    write_results(path, results[:1])
    assert json.loads(path.read_text()) == results[:1]
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp files left behind
    with pytest.raises(TypeError):
        write_results(path, [{"bad": object()}])
    assert json.loads(path.read_text()) == results[:1] and len(list(path.parent.iterdir())) == 1


def test_stats_table_lists_the_ten_stats():
    stats = dict(zip(STAT_KEYS, np.linspace(0.1, 1.0, 10)))
    stats["APm"] = -1.0
    table = stats_table(stats, "val2017")
    assert [c.header for c in table.columns] == list(STAT_KEYS) and table.title == "val2017"
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "10.0" in text and "100.0" in text and " - " in text
    with pytest.raises(ValueError, match="ARl"):
        stats_table({k: 0.5 for k in STAT_KEYS[:-1]}, "x")


def test_stats_table_shows_a_pckh_table_in_its_own_columns():
    stats = {"Head": 97.5, "Shoulder": 90.25, "Elbow": float("nan"), "Mean": 88.125, "Mean@0.1": 30.0}
    table = stats_table(stats, "mpii val")
    assert [c.header for c in table.columns] == list(stats)
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "97.50" in text and "88.12" in text and " - " in text  # percentages as printed; nan shows "-"


# ---------------------------------------------------------------------------------------------------------------
# faster-coco-eval backend
# ---------------------------------------------------------------------------------------------------------------


def test_faster_coco_eval_matches_pycocotools_on_the_same_results(tmp_path):
    """The 10 stats agree within 1e-4 (results with and without the bbox that sets the area, §10.19)."""
    pytest.importorskip("faster_coco_eval")  # the fast-eval extra; CI installs it (.ci/run)
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("bench_eval", REPO / "bench" / "bench_eval.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gt, results = bench.make_eval_set(120, seed=1)
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(gt))
    plain = [{k: r[k] for k in ("image_id", "category_id", "keypoints", "score")} for r in results]
    for res in (results, plain):
        ref = coco_keypoint_eval(gt_file, res)
        fast = coco_keypoint_eval(gt_file, res, backend="faster")
        assert list(fast) == list(STAT_KEYS)
        assert all(abs(ref[k] - fast[k]) <= 1e-4 for k in STAT_KEYS), (ref, fast)
        assert 0.05 < ref["AP"] < 0.95  # a results file that exercises matching, not a trivial 0 or 1
    assert coco_keypoint_eval(gt_file, results)["APm"] != coco_keypoint_eval(gt_file, plain)["APm"]


def test_a_missing_backend_package_fails_early_with_the_install_command(monkeypatch):
    import builtins

    from sshpe.evaluation.coco_ap import BackendUnavailable, check_backend

    real_import = builtins.__import__

    def no_faster(name, *args, **kwargs):
        if name == "faster_coco_eval":
            raise ImportError("No module named 'faster_coco_eval'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faster)
    with pytest.raises(BackendUnavailable, match=r"pip install 'sshpe\[fast-eval\]'"):
        check_backend("faster")
    check_backend("pycocotools")
