"""Issue 15: bad input never becomes a traceback, a hang or mixed data.

One test per hazard of the issue (hostile recipes, re-sharding, dead workers, corrupt shards and weight files, torn
checkpoints, two writers, a full or read-only disk, bad annotations), plus a bounded, seeded sample of the cases of
`bench/fuzz.py` (whose long run, `python bench/fuzz.py --cases 1500`, is reported in docs/robustness.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import pytest
from sshpe._cli.app import app
from typer.testing import CliRunner

from sshpe.checkpoint import COMPLETE, CheckpointError, plan_resume, verify_checkpoint
from sshpe.data.prepare import find_sources, shard_dataset
from sshpe.data.readers.coco import InvalidAnnotations
from sshpe.data.shard_access import ShardError
from sshpe.data.shard_folder import _recover, write_shard_folder
from sshpe.data.shard_format import ShardFormatError
from sshpe.data.shard_writer import InvalidImage, read_manifest
from sshpe.data.streams import ValDataset, make_train_loader, make_val_loader
from sshpe.export import WeightsFileError, load_exported, read_metadata
from sshpe.parallel import WorkerDied, ordered_map
from sshpe.recipe import RecipeError, load_recipe
from sshpe.run_lock import run_lock
from sshpe.schema import COCO17

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "_smoke.yaml"
_spec = importlib.util.spec_from_file_location("fuzz", REPO / "bench" / "fuzz.py")
fz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fz)
DDP1 = {"world_size": 1, "engine": "ddp", "zero_stage": None}


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> fz.Fixtures:
    """Two tiny synthetic datasets, their shards, and a 4-step smoke run (checkpoints 2 and 4, an exported model)."""
    return fz.Fixtures(tmp_path_factory.mktemp("robust"), need_weights=True)


def _one_line(msg: str, *names: str, limit: int = 400) -> None:
    assert "Traceback" not in msg and "Caught " not in msg, msg
    assert len(msg.strip().splitlines()) == 1 and len(msg) <= limit, msg[:2000]
    for name in names:
        assert name in msg, (name, msg)


# ---------------------------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------------------------

_BOMB = fz._bomb(6, 9)  # 9^6 = 531441 "lol"s behind one alias


@pytest.mark.parametrize(
    "text, words",
    [
        (f"data: {{shards: x}}\n{_BOMB}", "YAML bomb"),
        ("name: deep\ndata: {shards: x}\nx: " + "[" * 900 + "]" * 900 + "\n", "nested deeper than 32 levels"),
        ("name: caf\xe9\ndata: {shards: x}\n", "not UTF-8 text (byte 0xe9 at offset 9)"),
        ("name: t\ndata: {shards: x\n", "not valid YAML at line"),
        ("\x00name: t\n", "not valid YAML"),  # found by bench/fuzz.py: the reader refused it before parsing
    ],
    ids=["billion-laughs", "nested-900", "latin-1", "unclosed", "nul-byte"],
)
def test_hostile_recipe_files_are_one_line_errors(tmp_path, text, words):
    path = tmp_path / "r.yaml"
    path.write_bytes(text.encode("latin-1") if "caf" in text else text.encode())
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    _one_line(str(err.value), str(path), words)


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.batch_size=[1,", "not valid YAML"),
        ("data.input_size=[0,0]", "data.input_size: input_size [0, 0] must be positive"),
        ("augment.mum.grid=[4,0]", "augment.mum.grid[1]: Input should be greater than or equal to 1"),
        ("data.sigma=.inf", "data.sigma: Input should be a finite number"),
        ("model.head_channels=[0,16,16]", "model.head_channels[0]"),
        ("optim.lr=.inf", "optim.lr: Input should be a finite number"),
        ("data.std=[0,0,0]", "data.std: std [0.0, 0.0, 0.0] must be > 0"),
        ("augment.paths=[[{kind: randaugment, n: 100000}]]", "augment.paths[0][0].n: Input should be less than"),
        ("augment.repeat=100000", "augment.repeat: Input should be less than or equal to 16"),
        ("name=/abs/path", "name: a run name must be one folder name"),
        ("name=../..", "name: a run name must be one folder name"),
        ("name=" + "x" * 5000, "(got 'xxxxxxxx"),
    ],
    ids=lambda v: v[:40],
)
def test_issue_values_are_refused_at_validation(override, field):
    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, [override])
    msg = str(err.value)
    _one_line(msg, str(SMOKE), field)


def test_deepspeed_engine_is_refused_at_check_when_not_installed(monkeypatch):
    from sshpe.distributed import EngineChoice, EngineError, _require_deepspeed

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import fails, find_spec returns None
    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, ["distributed.engine=deepspeed"])
    _one_line(str(err.value), "DeepSpeed is not installed", "pip install -e '.[deepspeed]'")
    with pytest.raises(EngineError, match=r"cannot be imported .*pip install"):
        _require_deepspeed(EngineChoice("deepspeed", 2, None, "launcher"))


def test_recipe_check_prints_errors_without_traceback(tmp_path):
    bomb, latin = tmp_path / "bomb.yaml", tmp_path / "latin.yaml"
    bomb.write_text(f"data: {{shards: x}}\n{_BOMB}")
    latin.write_bytes("name: caf\xe9\ndata: {shards: x}\n".encode("latin-1"))
    res = CliRunner().invoke(app, ["recipe", "check", str(bomb), str(latin), str(SMOKE), "--set", "train.lr=[1,"])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in res.output and len(res.output) < 1000
    assert "YAML bomb" in lines[0] and "not UTF-8" in lines[1] and "--set 'train.lr=[1,'" in lines[2]


def test_batch_larger_than_its_split_is_refused_at_start(fx):
    from sshpe.loop import check_data

    recipe = load_recipe(SMOKE, [f"data.shards={fx.shards}", "train.batch_size=100000"])
    with pytest.raises(RecipeError) as err:
        check_data(recipe, read_manifest(fx.shards), fx.shards)
    _one_line(str(err.value), "train.batch_size=100000 is larger than split 'labeled'")


# ---------------------------------------------------------------------------------------------------------------
# Shard writes: one transaction
# ---------------------------------------------------------------------------------------------------------------


def _truncate(path: Path, frac: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_failed_reshard_keeps_the_folder_and_stale_splits_are_removed(fx, tmp_path):
    out = tmp_path / "O"
    shutil.copytree(fx.old_shards, out)  # `sshpe shard B/data O`
    before = fz.snapshot(out)
    a = tmp_path / "A"
    shutil.copytree(fx.data, a)
    bad = sorted((a / "images" / "train").glob("*.jpg"))[1]
    _truncate(bad)
    assert cv2.imread(str(bad)) is not None  # what the writer used to read: libjpeg only warns, grey fill
    with pytest.raises(InvalidImage) as err:  # `sshpe shard A/data O` with one corrupt image
        shard_dataset(find_sources(a), out, dataset="synth", input_hw=(64, 64), shard_size=8, progress=False)
    assert str(bad) in str(err.value) and "truncated" in str(err.value) and "annotation id" in str(err.value)
    assert fz.snapshot(out) == before and _leftovers(tmp_path, "O") == []

    (a / "annotations" / "person_detections_val.json").unlink()
    shutil.copyfile(fx.data / "images" / "train" / bad.name, bad)
    result = shard_dataset(find_sources(a), out, dataset="synth", input_hw=(64, 64), shard_size=8, progress=False)
    assert result.removed == ("val_det",) and set(result.written) == {"labeled", "unlabeled", "val"}
    assert sorted(read_manifest(out)["splits"]) == ["labeled", "unlabeled", "val"]
    assert not list(out.glob("*val_det*")) and _leftovers(tmp_path, "O") == []


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_during_shard_leaves_the_old_or_the_new_folder(fx, tmp_path, seed):
    assert fz.case_kill_shard(random.Random(seed), tmp_path, fx.data, fx.old_shards, fx.new_snapshot) == "ok"


def test_two_rename_commit_and_its_interruption(fx, tmp_path, monkeypatch):
    """Where RENAME_EXCHANGE is unavailable, the commit is two renames; a kill between them is undone."""
    import sshpe.data.shard_folder as shard_folder

    out = tmp_path / "O"
    shutil.copytree(fx.old_shards, out)
    before = fz.snapshot(out)
    monkeypatch.setattr(shard_folder, "exchange_paths", lambda a, b: False)
    insts = {"val": (_val_instances(fx.data), {})}
    kw = dict(dataset="synth", schema=COCO17, input_hw=(64, 64), sources={"val_annotations": _val_ann(fx.data)})
    write_shard_folder(out, insts, keep_other_splits=True, progress=False, **kw)
    assert fz.snapshot(out)["synth-labeled-000000.tar"] == before["synth-labeled-000000.tar"]  # carried over
    assert _leftovers(tmp_path, "O") == []

    dead = _dead_pid()
    os.rename(out, tmp_path / f".O.previous-{dead}")  # killed between the renames
    (tmp_path / f".O.staging-{dead}").mkdir()
    after_first = fz.snapshot(tmp_path / f".O.previous-{dead}")
    _recover(out.absolute())
    assert fz.snapshot(out) == after_first and _leftovers(tmp_path, "O") == []


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _val_ann(data: Path) -> Path:
    return data / "annotations" / "person_keypoints_val.json"


def _val_instances(data: Path):
    from sshpe.data.readers.coco import load_instances

    return load_instances(_val_ann(data), data / "images" / "val", kind="val", aspect=1.0, num_joints=17)


def test_a_folder_with_foreign_files_is_not_replaced(fx, tmp_path):
    out = tmp_path / "O"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that are not shards \(notes.txt\)"):
        shard_dataset(find_sources(fx.data), out, dataset="synth", input_hw=(64, 64), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_dead_pool_worker_fails_the_map():
    with pytest.raises(WorkerDied, match="worker process died"):
        with ordered_map(os._exit, [3, 3, 3], workers=1, what="test") as results:
            list(results)
    with ordered_map(abs, range(-50, 0), workers=2, what="test", chunksize=3) as results:
        assert list(results) == list(range(50, 0, -1))  # in order, through a bounded window


def test_a_killed_shard_worker_ends_the_run_with_one_line(fx, tmp_path):
    assert fz.case_kill_worker(random.Random(0), tmp_path, fx.data) == "clean"


# ---------------------------------------------------------------------------------------------------------------
# Shard reads: checked against the manifest, errors stay one line through DataLoader workers
# ---------------------------------------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(folder: Path, edit) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("key", ["splits", "aspect", "schema"])
def test_manifest_missing_a_field_is_named(fx, tmp_path, key):
    folder = _copy(fx.shards, tmp_path / "s")
    _edit_manifest(folder, lambda m: m.pop(key))
    with pytest.raises(ShardFormatError) as err:
        ValDataset(folder, "val")
    _one_line(str(err.value), str(folder / "manifest.json"), f"{key}: Field required", "run `sshpe shard` again")


def test_record_with_16_keypoints_names_shard_and_key(fx, tmp_path):
    folder = _copy(fx.shards, tmp_path / "s")
    tar = folder / "synth-val-000000.tar"
    fz._rewrite_tar(tar, lambda r: r["keypoints"].pop(), 0)
    fz._resign(folder)
    ds = ValDataset(folder, "val")
    with pytest.raises(ShardFormatError) as err:
        ds[0]
    _one_line(str(err.value), str(tar), "16 keypoints but the manifest's schema has 17")


@pytest.mark.parametrize("workers", [0, 1])
def test_reader_errors_are_one_line_through_dataloader_workers(fx, tmp_path, workers):
    folder = _copy(fx.shards, tmp_path / "s")
    tar = folder / "synth-labeled-000000.tar"
    fz._rewrite_tar(tar, lambda r: r.__setitem__("scale", [0.0, -1.0]), 1)
    fz._resign(folder)
    loader = make_val_loader(folder, "labeled", batch_size=4, rank=0, world_size=1, num_workers=workers)
    with pytest.raises(ShardFormatError) as err:
        list(loader)
    _one_line(str(err.value), str(tar), "scale [0.0, -1.0] must be positive", limit=600)

    _truncate(tar, 0.99)
    with pytest.raises(ShardError) as err:
        make_train_loader(folder, "labeled", batch_size=2, seed=0, rank=0, world_size=1, num_workers=workers)
    _one_line(str(err.value), str(tar), "bytes but the manifest says")

    shutil.copyfile(fx.shards / "synth-unlabeled-000000.tar", tar)  # a swapped tar of another size: caught too
    _edit_manifest(folder, lambda m: m["splits"]["labeled"]["shards"][0].pop("size"))  # an older manifest
    it = iter(make_train_loader(folder, "labeled", batch_size=2, seed=0, rank=0, world_size=1, num_workers=workers))
    with pytest.raises(ShardError) as err:
        next(it)
    _one_line(str(err.value), str(tar), "sha256 differs")


# ---------------------------------------------------------------------------------------------------------------
# Annotations and images
# ---------------------------------------------------------------------------------------------------------------


def _spoil_annotations(root: Path) -> list[int]:
    path = root / "annotations" / "person_keypoints_train.json"
    data = json.loads(path.read_text())
    a = data["annotations"]
    a[0]["bbox"] = [10, 10, -30, -40]
    a[1]["keypoints"][3] = float("nan")
    a[2]["keypoints"][5] = 7
    a[3]["bbox"] = [5.0, 5.0, 1.0, 1.0]
    path.write_text(json.dumps(data))
    return [x["id"] for x in a[:4]]


def test_invalid_annotations_are_listed_and_skip_invalid_counts_them(tmp_path):
    from sshpe.synth import generate

    clean = tmp_path / "clean"
    generate(clean, num_train=8, num_val=3, seed=7, image_size=(128, 96), progress=False)
    root = _copy(clean, tmp_path / "d")
    ids = _spoil_annotations(root)
    with pytest.raises(InvalidAnnotations) as err:
        shard_dataset(find_sources(root), tmp_path / "O", dataset="synth", input_hw=(64, 64), progress=False)
    msg = str(err.value)
    assert "4 invalid annotation(s)" in msg and "--skip-invalid" in msg and "Traceback" not in msg
    for ann_id, what in zip(ids, ["negative width", "not finite", "visibility 7", "at most 1x1 px"]):
        assert any(f"annotation id {ann_id} " in line and what in line for line in msg.splitlines()), (ann_id, msg)
    assert not (tmp_path / "O").exists()

    _truncate(sorted((root / "images" / "val").glob("*.jpg"))[0])
    train = json.loads((root / "annotations" / "person_keypoints_train.json").read_text())
    last = train["annotations"][-1]  # an image whose persons are not among the spoiled annotations
    assert last["id"] not in ids
    file_name = next(i["file_name"] for i in train["images"] if i["id"] == last["image_id"])
    (root / "images" / "train" / file_name).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    full = shard_dataset(find_sources(clean), tmp_path / "full", dataset="synth", input_hw=(64, 64), progress=False)
    result = shard_dataset(find_sources(root), tmp_path / "O", dataset="synth", input_hw=(64, 64), skip_invalid=True,
                           progress=False)  # fmt: skip
    splits = read_manifest(tmp_path / "O")["splits"]
    annotations = {"bad_box": 2, "bad_visibility": 1, "non_finite_keypoints": 1}
    assert splits["labeled"]["skipped"] == splits["unlabeled"]["skipped"]
    assert splits["labeled"]["skipped"].keys() == annotations.keys() | {"undecodable_image"}
    assert all(splits["labeled"]["skipped"][k] == n for k, n in annotations.items())
    assert splits["val"]["skipped"].keys() == {"truncated_image"}
    for split, entry in splits.items():
        assert entry["count"] == full.splits[split]["count"] - sum(entry["skipped"].values()), split
    assert result.splits == splits


# ---------------------------------------------------------------------------------------------------------------
# Weight files and checkpoints
# ---------------------------------------------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    {"truncated": lambda: _truncate(path, 0.5), "empty": lambda: path.write_bytes(b""),
     "random": lambda: path.write_bytes(os.urandom(4096))}[how]()  # fmt: skip


@pytest.mark.parametrize("how", ["truncated", "empty", "random"])
def test_damaged_model_files_are_named(fx, tmp_path, how):
    from sshpe.checkpoint import load_weights
    from sshpe.nets import build_nets

    model = tmp_path / "model.safetensors"
    shutil.copyfile(fx.model, model)
    _damage(model, how)
    for load in (load_exported, read_metadata):
        with pytest.raises(WeightsFileError) as err:
            load(model)
        _one_line(str(err.value), str(model), "truncated, corrupt or another format")
    with pytest.raises(CheckpointError) as err:
        load_weights(model, build_nets(load_recipe(SMOKE)))
    _one_line(str(err.value), str(model))


def test_damaged_weights_reach_the_cli_as_one_line(fx, tmp_path):
    model = tmp_path / "bad.safetensors"
    shutil.copyfile(fx.model, model)
    _truncate(model)
    img = next((fx.data / "images" / "val").glob("*.jpg"))
    run = tmp_path / "run"
    shutil.copytree(fx.run, run)
    torn = run / "checkpoints" / "step-000004"
    _truncate(torn / "student.safetensors")
    shards = f"data.shards={fx.shards}"
    commands = {
        "eval": ["eval", str(model), "--recipe", str(SMOKE), "--set", shards],
        "predict": ["predict", str(model), str(img), "--out", str(tmp_path / "p")],
        "export": ["export", str(run), "--checkpoint", str(torn), "--out", str(tmp_path / "e.safetensors")],
        "init-from": ["train", str(SMOKE), "--set", shards, "--out", str(tmp_path / "t"), "--init-from", str(model)],
    }
    for name, args in commands.items():
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit), (name, res.output)
        text = res.output.strip().splitlines()[-1]
        assert "Traceback" not in res.output and ("bad.safetensors" in text or "student.safetensors" in text), text


def test_torn_latest_checkpoint_falls_back_to_the_previous_one(fx, tmp_path):
    run = _copy(fx.run, tmp_path / "run")
    ckpts = run / "checkpoints"
    _truncate(ckpts / "step-000004" / "model.safetensors")
    plan = plan_resume(ckpts, True, None, DDP1)
    assert plan.path == ckpts / "step-000002" and plan.exact
    warning, resumed = plan.message.splitlines()
    assert "warning: skipping checkpoint" in warning and "step-000004: model.safetensors is truncated" in warning
    assert resumed.startswith(f"resumed from {ckpts / 'step-000002'}")

    state = ckpts / "step-000002" / "trainer_state.json"
    state.write_text(state.read_text()[:20])
    with pytest.raises(CheckpointError) as err:
        plan_resume(ckpts, True, None, DDP1)
    assert "no checkpoint of this run loads" in str(err.value) and str(state) in str(err.value)
    with pytest.raises(CheckpointError, match="step-000004: model.safetensors is truncated"):
        plan_resume(ckpts, ckpts / "step-000004", None, DDP1)  # asked for explicitly: no fall-back


def test_export_refuses_a_checkpoint_without_complete(fx, tmp_path):
    from sshpe.runner import export_run

    run = _copy(fx.run, tmp_path / "run")
    torn = run / "checkpoints" / "step-000004"
    (torn / COMPLETE).unlink()
    with pytest.raises(CheckpointError) as err:
        export_run(run, tmp_path / "m.safetensors", torn, "auto")
    _one_line(str(err.value), str(torn), "no COMPLETE marker")
    assert not (tmp_path / "m.safetensors").exists()


def test_sigkill_during_training_leaves_only_loadable_checkpoints(fx, tmp_path):
    assert fz.case_kill_train(random.Random(3), tmp_path, fx.shards) == "ok"


def test_checkpoint_verification_reads_every_file(fx, tmp_path):
    ckpt = _copy(fx.ckpt, tmp_path / "step-000004")
    verify_checkpoint(ckpt)
    opt = ckpt / "optimizer.bin"
    data = bytearray(opt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, a damaged member: only the CRC notices
    opt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="optimizer.bin is (truncated or )?corrupt"):
        verify_checkpoint(ckpt)


# ---------------------------------------------------------------------------------------------------------------
# One writer per run folder
# ---------------------------------------------------------------------------------------------------------------


def test_a_second_train_on_the_same_folder_is_refused(fx, tmp_path):
    run = tmp_path / "run"
    holder = SimpleNamespace(is_main_process=True, num_processes=1)
    with run_lock(run, holder):
        res = CliRunner().invoke(app, ["train", str(SMOKE), "--set", f"data.shards={fx.shards}", "--out", str(run)])
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
        _one_line(res.output.strip().splitlines()[-1], f"in use by another `sshpe train` (pid {os.getpid()})")
        assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    with run_lock(run, holder):  # released with the block
        pass


# ---------------------------------------------------------------------------------------------------------------
# A full disk and a read-only output folder (a private tmpfs mount: root or an unprivileged user namespace)
# ---------------------------------------------------------------------------------------------------------------


def _unshare() -> list[str]:
    for cmd in (["unshare", "-m"], ["unshare", "-rm"]):
        try:
            probe = subprocess.run([*cmd, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
        except FileNotFoundError:
            break
        if probe.returncode == 0:
            return cmd
    pytest.skip("mounting a private tmpfs needs root or unprivileged user namespaces (unshare -m/-rm failed here)")


def test_full_disk_and_read_only_output_give_one_line_errors(fx, tmp_path):
    """ENOSPC during a checkpoint and during sharding, and a read-only output for all eight commands."""
    unshare = _unshare()
    mnt, py = tmp_path / "mnt", sys.executable
    mnt.mkdir()
    pth = tmp_path / "official.pth"
    _official_checkpoint(pth)
    img = next((fx.data / "images" / "val").glob("*.jpg"))
    sh = f"data.shards={fx.shards}"
    cli = f"{py} -m sshpe._cli.app"
    read_only = {
        "synth": f"synth {mnt}/x --train 1 --val 1 --workers 0",
        "shard": f"shard {fx.data} {mnt}/s --input-size 64x64 --workers 0",
        "train": f"train {SMOKE} --set {sh} --out {mnt}/run",
        "eval": f"eval {fx.model} --recipe {SMOKE} --set {sh} --results {mnt}/r.json",
        "export": f"export {fx.run} --out {mnt}/m.safetensors",
        "predict": f"predict {fx.model} {img} --out {mnt}/p",
        "preview": f"augment preview {SMOKE} --set {sh} --out {mnt}/p.png",
        "import": f"import-weights {pth} {SMOKE} --out {mnt}/i.safetensors",
    }
    script = [
        f"mount -t tmpfs -o size=10m tmpfs {mnt}",
        f"echo '## enospc-train'; {cli} train {SMOKE} --set {sh} --out {mnt}/run 2>&1; echo rc=$?",
        f"ls {mnt}/run/checkpoints; umount {mnt}; mount -t tmpfs -o size=64k tmpfs {mnt}",
        f"echo '## enospc-shard'; {cli} shard {fx.data} {mnt}/s --input-size 64x64 --workers 0 2>&1; echo rc=$?",
        f"ls -a {mnt}; umount {mnt}; mount -t tmpfs -o size=1m,ro tmpfs {mnt}",
        *[f"echo '## ro-{k}'; {cli} {v} 2>&1; echo rc=$?" for k, v in read_only.items()],
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TERM": "dumb", "COLUMNS": "400"}
    res = subprocess.run([*unshare, "sh", "-c", "\n".join(script)], capture_output=True, text=True, env=env)
    sections = {}
    for block in res.stdout.split("## ")[1:]:
        name, _, body = block.partition("\n")
        sections[name] = body
    assert len(sections) == 10, res.stdout[-3000:] + res.stderr[-3000:]
    for name, body in sections.items():
        errors = [line for line in body.splitlines() if line.startswith("error:")]
        assert "rc=2" in body and "Traceback" not in body and len(errors) == 1, (name, body[-2000:])
        if name.startswith("ro-"):
            assert "Read-only file system [EROFS]" in errors[0], (name, errors[0])
    assert "the disk is full" in sections["enospc-train"] and "step-000002" in sections["enospc-train"]
    assert "No space left on device [ENOSPC]" in sections["enospc-shard"]
    assert "nothing was committed" in sections["enospc-shard"] and ".s.staging" not in sections["enospc-shard"]


def _official_checkpoint(path: Path) -> None:
    import torch

    from sshpe.models import build_model

    net = build_model("test_resnet", 17, head_channels=(16, 16, 16))
    torch.save({"state_dict": net.state_dict()}, path)


# ---------------------------------------------------------------------------------------------------------------
# A seeded sample of the fuzz run
# ---------------------------------------------------------------------------------------------------------------


def test_seeded_fuzz_sample_has_no_traceback_hang_or_mixed_output(fx, tmp_path):
    kinds = ["recipe", "recipe_cli", "shards", "weights", "annotations"]
    result = fz.run(100, 15, tmp_path, kinds, fx=fx, log=lambda line: None)
    assert result["failures"] == [] and result["traceback"] == result["hang"] == result["mixed"] == 0
    assert result["clean"] > 50 and result["cases"] >= 100  # most hostile inputs are refused, with a clean line
