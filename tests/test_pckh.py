"""PCKh against hand-computed cases (reference §1.9): a prediction exactly on the threshold, missing joints, a
zero-size head box, the Mean without pelvis and thorax, the Mean@0.1 quirk, and the .mat files."""

from __future__ import annotations

import numpy as np
import pytest

from sshpe.data.readers.mpii import read_pckh_gt, write_pckh_gt, write_pred_mat
from sshpe.evaluation.pckh import normalized_errors, pckh_table
from sshpe.schema import MPII16
from sshpe.synth.native import MPII_MAT_NAMES

SPEC = MPII16.pckh
HEAD = np.array([[0.0, 0.0], [30.0, 40.0]])  # diagonal 50 px -> head size 0.6 * 50 = 30 px; PCKh@0.5 allows 15 px
J = {n: i for i, n in enumerate(MPII16.names)}


def _people(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n persons: GT joints spread out, predictions exactly on them, nothing missing, 30-px head sizes."""
    gt = np.stack([np.stack([[100.0 + 7 * j, 200.0 + 3 * j + 50 * p] for j in range(16)]) for p in range(n)])
    return gt.copy(), gt, np.zeros((n, 16), dtype=bool), np.repeat(HEAD[None], n, 0)


def test_a_prediction_exactly_on_the_threshold_is_correct():
    pred, gt, missing, boxes = _people(1)
    pred[0, J["head_top"]] += (9.0, 12.0)  # 15 px = 0.5 head sizes: correct (<=)
    pred[0, J["right_shoulder"]] += (9.0, 12.01)  # just beyond
    assert normalized_errors(pred, gt, boxes, 0.6)[0, J["head_top"]] == 0.5
    table = pckh_table(pred, gt, missing, boxes, SPEC)
    assert table["Head"] == 100.0 and table["Shoulder"] == 50.0
    # 14 joints count for the Mean (pelvis and thorax never do); one of them is wrong
    assert table["Mean"] == pytest.approx(100.0 * 13 / 14)


def test_missing_joints_do_not_count():
    pred, gt, missing, boxes = _people(2)
    pred[1, J["head_top"]] += 500.0  # far off, but the ground truth has no head top for person 1
    missing[1, J["head_top"]] = True
    pred[1, J["left_wrist"]] += 500.0  # far off and labelled: counts as wrong
    table = pckh_table(pred, gt, missing, boxes, SPEC)
    assert table["Head"] == 100.0 and table["Wrist"] == pytest.approx((50.0 + 100.0) / 2)
    # visible-count weights: 27 counted joint instances (head top only once), one wrong
    assert table["Mean"] == pytest.approx(100.0 * 26 / 27)


def test_a_zero_size_head_box_makes_every_visible_joint_of_that_person_wrong():
    pred, gt, missing, boxes = _people(2)
    boxes[1] = [[5.0, 5.0], [5.0, 5.0]]  # exact predictions, but 0/0: never <= threshold (as the reference)
    table = pckh_table(pred, gt, missing, boxes, SPEC)
    assert all(table[c] == 50.0 for c, _ in SPEC.columns) and table["Mean"] == 50.0
    missing[1] = True  # nothing labelled for that person: it no longer matters
    assert pckh_table(pred, gt, missing, boxes, SPEC)["Mean"] == 100.0


def test_mean_weights_joints_by_visible_count_and_leaves_out_pelvis_and_thorax():
    pred, gt, missing, boxes = _people(2)
    missing[1, 8:] = True  # person 1 shows only the legs (0-5) and pelvis/thorax (6, 7)
    pred[1, J["right_ankle"]] += (20.0, 0.0)  # wrong
    pred[:, J["pelvis"]] += 100.0  # pelvis and thorax all wrong: they must not lower the Mean
    pred[:, J["thorax"]] += 100.0
    table = pckh_table(pred, gt, missing, boxes, SPEC)
    assert table["Ankle"] == pytest.approx((100.0 + 50.0) / 2)
    # counts: joints 0-5 twice (12), joints 8-15 once (8); the one wrong ankle: (1900 / 20) = 95
    assert table["Mean"] == pytest.approx(95.0)
    assert list(table) == ["Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1"]


def test_mean_at_01_is_read_at_011_only_with_the_reference_quirk():
    pred, gt, missing, boxes = _people(1)
    pred[0] += (3.15, 0.0)  # every joint 0.105 head sizes off
    exact = pckh_table(pred, gt, missing, boxes, SPEC)
    quirk = pckh_table(pred, gt, missing, boxes, SPEC, reference_quirks=True)
    assert exact["Mean"] == quirk["Mean"] == 100.0
    assert exact["Mean@0.1"] == 0.0 and quirk["Mean@0.1"] == 100.0  # the reference's curve index 11 is 0.11


def test_gt_and_pred_mat_files_round_trip(tmp_path):
    from scipy.io import loadmat

    pred, gt, missing, boxes = _people(3)
    missing[2, 4] = True
    path = tmp_path / "annot" / "gt_valid.mat"
    write_pckh_gt(path, gt, missing, boxes, MPII_MAT_NAMES)
    back = read_pckh_gt(path)
    assert np.array_equal(back["pos"], gt) and np.array_equal(back["missing"], missing)
    assert np.array_equal(back["headboxes"], boxes)
    raw = loadmat(str(path))
    assert raw["pos_gt_src"].shape == (16, 2, 3) and raw["headboxes_src"].shape == (2, 2, 3)  # MPII's layout
    names = [str(np.squeeze(n)) for n in raw["dataset_joints"].ravel()]
    assert names.index("head") == J["head_top"]
    preds = np.concatenate([pred + 1, np.full((3, 16, 1), 0.5)], -1)
    write_pred_mat(tmp_path / "pred.mat", preds)
    assert np.array_equal(loadmat(str(tmp_path / "pred.mat"))["preds"], preds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annot", "pred.mat"]  # no temp files left


def test_bad_gt_files_are_rejected_in_one_line(tmp_path):
    from scipy.io import savemat

    with pytest.raises(FileNotFoundError, match="gt_valid.mat"):
        read_pckh_gt(tmp_path / "gt_valid.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match="junk.mat: not a readable MATLAB file"):
        read_pckh_gt(tmp_path / "junk.mat")
    savemat(tmp_path / "nobox.mat", {"jnt_missing": np.zeros((16, 2)), "pos_gt_src": np.zeros((16, 2, 2))})
    with pytest.raises(ValueError, match="nobox.mat: no 'headboxes_src' field"):
        read_pckh_gt(tmp_path / "nobox.mat")
    savemat(tmp_path / "k14.mat", {"jnt_missing": np.zeros((14, 2)), "pos_gt_src": np.zeros((14, 2, 2)),
                                   "headboxes_src": np.zeros((2, 2, 2))})  # fmt: skip
    with pytest.raises(ValueError, match="k14.mat: jnt_missing has shape \\(14, 2\\), expected \\(16, 2\\)"):
        read_pckh_gt(tmp_path / "k14.mat")
