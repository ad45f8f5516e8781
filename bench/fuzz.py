"""Fault injection and fuzzing of issue 15: hostile recipes and `--set` values, corrupt shards, manifests, records
and weight files, bad annotations and images, SIGKILL during `sshpe shard` and `sshpe train`, a killed pool worker.

    python bench/fuzz.py --cases 1500 [--seed 0] [--work DIR]

Each case ends as one of
  ok         accepted (a valid input, or damage that does not matter, e.g. a flipped bit inside tensor data);
  clean      a user error (ValueError family, WorkerDied, OSError with an errno) whose message is bounded, has no
             traceback and names the file (recipe, shard folder, weights file) it is about;
  traceback  any other exception, or an error message that breaks those rules;
  hang       over its time limit;
  mixed      an output left neither as it was nor complete (a shard folder that is neither the previous nor the
             new one, a checkpoint that auto-resume would pick but that does not load).
tests/test_robustness.py runs a bounded, seeded sample of the same cases in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "sshpe._cli.app"]
OUTCOMES = ("ok", "clean", "traceback", "hang", "mixed")
MAX_MESSAGE_LINES, MAX_MESSAGE_CHARS = 60, 20_000
CASE_SECONDS = 120.0  # an in-process case running longer is a hang (`--case-seconds`; generous for shared CPUs)

HOSTILE = [
    0, -1, 1, 10**9, 2**63, -(2**63), 1e308, float("inf"), float("-inf"), float("nan"), "", "x" * 5000, True, False,
    None, [], {}, [[[[[]]]]], "../..", "/abs/path", "é\u0000\u202e", [0, 0], [0, 0, 0], [-1, 10**9],
    {"kind": "bogus"}, "1e9ep", "-5", "30ep", [[{"kind": "cutout", "holes": 10**6}]], 0.5, -0.0,
]  # fmt: skip


class CaseTimeout(Exception):
    """Raised by SIGALRM inside an in-process case that ran past its limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def _alarm(signum, frame):
        raise CaseTimeout()

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def clean_message(msg: str, names: str | None) -> bool:
    """A user error message: non-empty, bounded, no traceback, and naming `names` (a path) when given."""
    lines = msg.strip().splitlines()
    return (
        bool(lines)
        and "Traceback" not in msg
        and "Caught " not in msg
        and len(lines) <= MAX_MESSAGE_LINES
        and len(msg) <= MAX_MESSAGE_CHARS
        and (names is None or names in msg)
    )


def classify(fn: Callable[[], object], names: str | None) -> str:
    """Run an in-process case and say how it ended."""
    from sshpe.parallel import WorkerDied

    try:
        with time_limit(CASE_SECONDS):
            fn()
    except CaseTimeout:
        return "hang"
    except (ValueError, WorkerDied) as err:
        return "clean" if clean_message(str(err), names) else "traceback"
    except OSError as err:
        return "clean" if err.errno is not None or clean_message(str(err), names) else "traceback"
    except Exception:
        return "traceback"
    return "ok"


def snapshot(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file directly in `folder` (shard folders are flat); {} when it does not exist. The
    manifest is hashed without its sources' `relative` paths, which depend on where the folder lies."""
    if not folder.is_dir():
        return {}
    return {p.name: _digest(p) for p in sorted(folder.iterdir()) if p.is_file()}


def _digest(path: Path) -> str:
    data = path.read_bytes()
    if path.name == "manifest.json":
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            manifest = json.loads(data)
            for entry in manifest.get("sources", {}).values():
                entry.pop("relative", None)
            data = json.dumps(manifest, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------------------------


def field_paths() -> list[str]:
    """Every dotted field path of the recipe schema (union members included), e.g. `augment.mum.grid`."""
    from pydantic import BaseModel

    from sshpe.recipe import Recipe, _unwrap

    out: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            path = f"{prefix}{f.alias or name}"
            out.append(path)
            for t in _unwrap(f.annotation):
                if isinstance(t, type) and issubclass(t, BaseModel) and path.count(".") < 4:
                    walk(t, path + ".")

    walk(Recipe, "")
    return sorted(set(out))


def _leaves(node: object, prefix: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*prefix, k))] or [prefix]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, (*prefix, i))] or [prefix]
    return [prefix]


def _set(raw: dict, path: tuple, value: object) -> None:
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def mutate_raw(rng: random.Random, raw: dict, paths: list[str]) -> dict:
    """One to three structural mutations of a parsed recipe."""
    raw = copy.deepcopy(raw)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        if op == 0:  # a present leaf gets a hostile value
            path = rng.choice(_leaves(raw))
            if path:
                _set(raw, path, copy.deepcopy(rng.choice(HOSTILE)))
        elif op == 1:  # any schema field, present or not, gets a hostile value
            keys = rng.choice(paths).split(".")
            node = raw
            for k in keys[:-1]:
                node = node.setdefault(k, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node[keys[-1]] = copy.deepcopy(rng.choice(HOSTILE))
        elif op == 2:  # delete a key
            path = rng.choice(_leaves(raw))
            if path and isinstance(path[-1], str):
                node = raw
                for key in path[:-1]:
                    node = node[key]
                node.pop(path[-1], None)
        elif op == 3:  # an unknown key
            raw[rng.choice(["daat", "x" * rng.randint(1, 300), "train2", "Name"])] = rng.choice(HOSTILE)
        else:  # a section becomes a scalar or a list
            section = rng.choice(["data", "model", "teacher", "augment", "optim", "train", "eval", "distributed"])
            raw[section] = rng.choice([1, "x", [], [1, 2], None])
    return raw


def _bomb(depth: int, width: int) -> str:
    text = "a0: &a0 [" + ", ".join(['"lol"'] * width) + "]\n"
    for i in range(1, depth):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]\n"
    return "x:\n" + "".join(f"  {line}\n" for line in text.splitlines()) + f"name: *a{depth - 1}\n"


def mutate_text(rng: random.Random, text: str) -> bytes:
    """A hostile recipe file: truncated, bad bytes, a YAML bomb, deep nesting, broken syntax."""
    op = rng.randrange(7)
    if op == 0:
        return text[: rng.randrange(len(text) + 1)].encode()
    if op == 1:
        at = rng.randrange(len(text) + 1)
        return (
            text[:at].encode() + bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 8))) + text[at:].encode()
        )
    if op == 2:
        return (text + _bomb(rng.randint(3, 9), rng.randint(5, 12))).encode()
    if op == 3:
        depth = rng.choice([40, 200, 900, 5000])
        return (text + "deep: " + "[" * depth + "]" * depth + "\n").encode()
    if op == 4:
        return (text + rng.choice(["\tbad: tab\n", "x: *undefined\n", "a: &a 1\nb: &a 2\n", ": :\n", "- [\n"])).encode()
    if op == 5:
        return (text + "name: " + "y" * rng.choice([10, 100_000]) + "\n").encode()
    return text.encode("utf-16")


def recipe_set_value(rng: random.Random, paths: list[str]) -> str:
    """A random `--set` item: a schema path (or junk) = a random YAML fragment (or broken YAML)."""
    key = rng.choice(paths + ["", ".", "a..b", "train.", "name.x", "augment.paths.0.0.kind", "x" * 500])
    value = rng.choice([json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v) for v in HOSTILE]
                       + ["[1,", "{a: ", "*x", "&a [*a]", "'", "!!python/object:os.system", "\x00", ""])  # fmt: skip
    return f"{key}={value}" if rng.random() > 0.05 else key


def case_recipe(rng: random.Random, work: Path, via_cli: bool) -> str:
    from sshpe.recipe import load_recipe

    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    base = rng.choice(recipes)
    text = base.read_text()
    path = work / f"r{rng.randrange(10**9)}.yaml"
    paths = field_paths()
    overrides: list[str] = []
    kind = rng.random()
    if kind < 0.45:
        path.write_text(yaml.safe_dump(mutate_raw(rng, yaml.safe_load(text), paths), allow_unicode=True))
    elif kind < 0.75:
        path.write_bytes(mutate_text(rng, text))
    else:
        path.write_text(text)
        overrides = [recipe_set_value(rng, paths) for _ in range(rng.randint(1, 3))]
    try:
        if not via_cli:
            return classify(lambda: load_recipe(path, overrides), str(path))
        return _cli_recipe_check(path, overrides)
    finally:
        path.unlink(missing_ok=True)


def _cli_recipe_check(path: Path, overrides: list[str]) -> str:
    from sshpe._cli.app import app
    from typer.testing import CliRunner

    args = ["recipe", "check", str(path)] + [a for o in overrides for a in ("--set", o)]
    try:
        with time_limit(CASE_SECONDS):
            res = CliRunner().invoke(app, args)
    except CaseTimeout:
        return "hang"
    if isinstance(res.exception, CaseTimeout):  # CliRunner catches what the alarm raised
        return "hang"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        return "traceback"
    if res.exit_code == 0:
        return "ok"
    return "clean" if res.exit_code == 2 and clean_message(res.output, str(path)) else "traceback"


# ---------------------------------------------------------------------------------------------------------------
# Shards, manifests, records
# ---------------------------------------------------------------------------------------------------------------


def _rewrite_tar(tar: Path, edit_record: Callable[[dict], None], index: int) -> None:
    """Rewrite one sample's JSON record in a tar (same writer settings), keeping everything else."""
    import tarfile

    from webdataset import TarWriter

    samples: dict[str, dict] = {}
    with tarfile.open(tar) as t:
        for m in t:
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {"__key__": key})[ext] = t.extractfile(m).read()
    key = list(samples)[index % len(samples)]
    rec = json.loads(samples[key]["json"])
    edit_record(rec)
    samples[key]["json"] = json.dumps(rec).encode()
    with tar.open("wb") as f, TarWriter(f, encoder=False, mtime=0) as w:
        for s in samples.values():
            w.write(s)


def _resign(folder: Path) -> None:
    """Update the manifest's sha256 and size of every tar (so a record edit reaches record validation)."""
    m = json.loads((folder / "manifest.json").read_text())
    for entry in m["splits"].values():
        for s in entry["shards"]:
            data = (folder / s["name"]).read_bytes()
            s["sha256"], s["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (folder / "manifest.json").write_text(json.dumps(m))


def corrupt_shards(rng: random.Random, folder: Path) -> None:
    """One kind of damage to a copied shard folder."""
    tars = sorted(folder.glob("*.tar"))
    tar = rng.choice(tars)
    manifest = folder / "manifest.json"
    op = rng.randrange(8)
    if op == 0:  # flip bytes
        data = bytearray(tar.read_bytes())
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        tar.write_bytes(bytes(data))
    elif op == 1:
        tar.write_bytes(tar.read_bytes()[: rng.randrange(tar.stat().st_size)])
    elif op == 2:  # another tar's bytes under this name (an identical copy when the folder has one tar)
        other = rng.choice([t for t in tars if t != tar] or [tar])
        if other != tar:
            shutil.copyfile(other, tar)
    elif op == 3:
        tar.unlink()
    elif op == 4:  # manifest: drop or spoil a field
        m = json.loads(manifest.read_text())
        path = rng.choice(_leaves(m) + [(k,) for k in m])
        node = m
        for key in path[:-1]:
            node = node[key]
        if rng.random() < 0.5 and isinstance(path[-1], str):
            node.pop(path[-1])
        else:
            node[path[-1]] = copy.deepcopy(rng.choice(HOSTILE))
        manifest.write_text(json.dumps(m))
    elif op == 5:
        text = manifest.read_bytes()
        manifest.write_bytes(text[: rng.randrange(len(text))] if rng.random() < 0.5 else b"\xff\xfe" + text)
    else:  # a record edit behind a re-signed manifest
        edits = [
            lambda r: r["keypoints"].pop(),
            lambda r: r.pop(rng.choice(sorted(r))),
            lambda r: r.__setitem__(rng.choice(sorted(r)), copy.deepcopy(rng.choice(HOSTILE))),
            lambda r: r["keypoints"][0].__setitem__(2, 7),
            lambda r: r.__setitem__("extra", 1),
        ]
        _rewrite_tar(tar, rng.choice(edits), rng.randrange(100))
        _resign(folder)


def read_everything(folder: Path, workers: int) -> None:
    """Read every sample of every split the way evaluation does (DataLoader, optional worker process)."""
    from sshpe.data.shard_writer import read_manifest
    from sshpe.data.streams import make_val_loader

    for split in read_manifest(folder)["splits"]:
        for _batch in make_val_loader(folder, split, batch_size=4, rank=0, world_size=1, num_workers=workers):
            pass


def case_shards(rng: random.Random, work: Path, base: Path) -> str:
    folder = work / f"s{rng.randrange(10**9)}"
    shutil.copytree(base, folder)
    try:
        corrupt_shards(rng, folder)
        return classify(lambda: read_everything(folder, rng.choice([0, 0, 1])), str(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Weight files and checkpoints
# ---------------------------------------------------------------------------------------------------------------


def corrupt_safetensors(rng: random.Random, path: Path) -> None:
    """Truncate, replace, or edit the header (metadata and offsets) of a safetensors file."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    op = rng.randrange(6)
    if op == 0:
        path.write_bytes(data[: rng.randrange(len(data))])
    elif op == 1:
        path.write_bytes(os.urandom(rng.choice([0, 7, 100, 5000])))
    elif op == 2:  # bits flipped in tensor data: undetectable without checksums, must still load
        body = bytearray(data)
        body[8 + n + rng.randrange(len(data) - 8 - n)] ^= 0xFF
        path.write_bytes(bytes(body))
    else:
        header = json.loads(data[8 : 8 + n])
        meta = header.setdefault("__metadata__", {})
        if op == 3 and meta:
            key = rng.choice(sorted(meta))
            meta[key] = rng.choice(["", "nope", "[0]", "-1", "{}", "null", '"x"', "1e309", json.dumps([[]] * 3)])
        elif op == 4 and meta:
            meta.pop(rng.choice(sorted(meta)))
        else:
            name = rng.choice([k for k in header if k != "__metadata__"])
            header[name]["data_offsets"] = [0, rng.choice([1, 10**12])]
        raw = json.dumps(header).encode()
        path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])


def case_weights(rng: random.Random, work: Path, model: Path, ckpt: Path) -> str:
    from sshpe.checkpoint import plan_resume, verify_checkpoint
    from sshpe.export import load_exported

    if rng.random() < 0.5:
        path = work / f"m{rng.randrange(10**9)}.safetensors"
        shutil.copyfile(model, path)
        try:
            corrupt_safetensors(rng, path)
            return classify(lambda: load_exported(path), str(path))
        finally:
            path.unlink(missing_ok=True)
    run = work / f"run{rng.randrange(10**9)}"
    copy_to = run / "checkpoints" / ckpt.name
    shutil.copytree(ckpt, copy_to)
    try:
        victim = rng.choice(sorted(p for p in copy_to.iterdir() if p.is_file()))
        if victim.suffix == ".safetensors":
            corrupt_safetensors(rng, victim)
        else:
            data = victim.read_bytes()
            victim.write_bytes(data[: rng.randrange(len(data))] if data else b"x")

        def resume() -> None:
            verify_checkpoint(copy_to)
            plan_resume(run / "checkpoints", True, None, {"world_size": 1, "engine": "ddp", "zero_stage": None})

        return classify(resume, str(copy_to))
    finally:
        shutil.rmtree(run, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Annotations and images through `sshpe shard`
# ---------------------------------------------------------------------------------------------------------------


def corrupt_dataset(rng: random.Random, root: Path) -> None:
    """Spoil one annotation field, one image entry or one image file of a copied synthetic dataset."""
    ann = root / "annotations" / rng.choice(["person_keypoints_train.json", "person_keypoints_val.json"])
    data = json.loads(ann.read_text())
    op = rng.randrange(6)
    if op <= 2 and data["annotations"]:
        a = rng.choice(data["annotations"])
        if op == 0:
            a["keypoints"][rng.randrange(len(a["keypoints"]))] = rng.choice([float("nan"), float("inf"), 7, -3, "x"])
        elif op == 1:
            a["bbox"] = rng.choice([[1, 2, -30, -40], [float("nan")] * 4, [0, 0, 1, 1], [1, 2, 3], "box", [1e308] * 4])
        else:
            key = rng.choice(["area", "iscrowd", "category_id", "id", "keypoints"])
            a[key] = copy.deepcopy(rng.choice(HOSTILE))
    elif op == 3:
        img = rng.choice(data["images"])
        key = rng.choice(["width", "height", "file_name", "id"])
        img[key] = copy.deepcopy(rng.choice(HOSTILE + ["missing.jpg"]))
    else:
        jpg = rng.choice(sorted((root / "images").rglob("*.jpg")))
        raw = jpg.read_bytes()
        jpg.write_bytes(raw[: rng.randrange(len(raw))] if op == 4 else os.urandom(rng.randrange(1, 3000)))
        return
    ann.write_text(json.dumps(data))


def case_annotations(rng: random.Random, work: Path, data: Path, shards: Path) -> str:
    from sshpe.data.prepare import find_sources, shard_dataset

    root, out = work / f"d{rng.randrange(10**9)}", work / f"o{rng.randrange(10**9)}"
    shutil.copytree(data, root)
    shutil.copytree(shards, out)
    before = snapshot(out)
    try:
        corrupt_dataset(rng, root)
        skip = rng.random() < 0.5

        def shard() -> None:
            shard_dataset(find_sources(root), out, dataset="synth", input_hw=(64, 64), shard_size=8,
                          skip_invalid=skip, progress=False)  # fmt: skip
            read_everything(out, 0)

        outcome = classify(shard, str(root))
        if outcome != "ok" and snapshot(out) != before:
            return "mixed"
        return outcome
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Kills: `sshpe shard` and `sshpe train` at a random instant, a pool worker
# ---------------------------------------------------------------------------------------------------------------


def _env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _kill_after(proc: subprocess.Popen, ready: Callable[[], bool], delay: float, limit: float) -> bool:
    """SIGKILL `proc` `delay` seconds after `ready()` first holds (or after it exits); False if neither happens
    within `limit` seconds."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    time.sleep(delay)
    proc.kill()
    proc.wait(timeout=60)
    return True


def case_kill_shard(rng: random.Random, work: Path, data: Path, old: Path, new_snapshot: dict) -> str:
    """SIGKILL `sshpe shard DATA OUT` (OUT holding an older folder) at a random instant after staging starts; OUT
    must be exactly the old folder or exactly the new one."""
    out = work / f"k{rng.randrange(10**9)}"
    shutil.copytree(old, out)
    before = snapshot(out)
    cmd = [*CLI, "shard", str(data), str(out), "--name", "synth", "--input-size", "64x64", "--shard-size", "8",
           "--workers", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        staging = lambda: any(p.name.startswith(f".{out.name}.staging-") for p in work.iterdir())  # noqa: E731
        if not _kill_after(proc, staging, rng.uniform(0, 3.0), 300):
            return "hang"
        after = snapshot(out)
        return "ok" if after in (before, new_snapshot) else "mixed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        shutil.rmtree(out, ignore_errors=True)
        for p in work.glob(f".{out.name}.*"):
            shutil.rmtree(p, ignore_errors=True)


def case_kill_train(rng: random.Random, work: Path, shards: Path) -> str:
    """SIGKILL `sshpe train` at a random instant after its first checkpoint; every checkpoint auto-resume could pick
    must load, and a plan must exist."""
    from sshpe.checkpoint import COMPLETE, complete_checkpoints, plan_resume, verify_checkpoint

    run = work / f"t{rng.randrange(10**9)}"
    cmd = [*CLI, "train", str(REPO / "recipes" / "_smoke.yaml"), "--set", f"data.shards={shards}", "--set",
           "train.duration=12", "--out", str(run)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = (run / "checkpoints" / "step-000002" / COMPLETE).exists
        if not _kill_after(proc, first, rng.uniform(0, 4.0), 600):
            return "hang"
        try:
            for _step, path in complete_checkpoints(run / "checkpoints"):
                verify_checkpoint(path)
            plan = plan_resume(run / "checkpoints", True, None, {"world_size": 1, "engine": "ddp", "zero_stage": None})
        except ValueError:
            return "mixed"
        return "ok" if plan is not None or proc.returncode == 0 else "mixed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        shutil.rmtree(run, ignore_errors=True)


def _spawned_children(pid: int) -> list[int]:
    """Pool worker processes of `pid` (spawned multiprocessing children)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for kid in kids:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():
                out.append(int(kid))
    return out


def case_kill_worker(rng: random.Random, work: Path, data: Path) -> str:
    """`sshpe shard --workers 2` whose workers block on a FIFO image; one worker is SIGKILLed: the run must end
    with a one-line error, and OUT must not appear."""
    root, out = work / f"w{rng.randrange(10**9)}", work / f"wo{rng.randrange(10**9)}"
    shutil.copytree(data, root)
    victim = sorted((root / "images" / "train").glob("*.jpg"))[0]
    victim.unlink()
    os.mkfifo(victim)  # a read blocks forever: the worker is stuck until killed
    cmd = [*CLI, "shard", str(root), str(out), "--input-size", "64x64", "--workers", "2"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (kids := _spawned_children(proc.pid)) and proc.poll() is None:
            if time.monotonic() > deadline:
                return "hang"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.5, 2.0))
        for kid in kids[:1]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            return "hang"
        if out.exists():
            return "mixed"
        last = err.strip().splitlines()[-1] if err.strip() else ""
        return (
            "clean"
            if proc.returncode == 2 and "worker process died" in last and "Traceback" not in err
            else "traceback"
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        for kid in _spawned_children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


class Fixtures:
    """A tiny synthetic dataset, its shards (an old and a new folder), an exported model and a checkpoint, all
    written by the real commands, once per run."""

    def __init__(self, work: Path, need_weights: bool) -> None:
        import sshpe._cli.app  # noqa: F401  (import everything once, outside the cases' time limits)

        import sshpe.checkpoint  # noqa: F401
        from sshpe.data.prepare import find_sources, shard_dataset
        from sshpe.synth import generate

        self.work = work
        self.data = work / "data"
        generate(self.data, num_train=4, num_val=2, seed=5, image_size=(128, 96), progress=False)
        self.old_data = work / "data_old"
        generate(self.old_data, num_train=3, num_val=2, seed=6, image_size=(128, 96), progress=False)
        self.shards, self.old_shards = work / "shards", work / "shards_old"
        kw = dict(dataset="synth", input_hw=(64, 64), shard_size=8, progress=False)
        shard_dataset(find_sources(self.data), self.shards, **kw)
        shard_dataset(find_sources(self.old_data), self.old_shards, **kw)
        self.new_snapshot = snapshot(self.shards)
        self.run = work / "run"
        if need_weights:  # checkpoints at steps 2 and 4, final/model.safetensors
            res = subprocess.run([*CLI, "train", str(REPO / "recipes" / "_smoke.yaml"), "--set",
                                  f"data.shards={self.shards}", "--set", "train.duration=4", "--out", str(self.run)],
                                 env=_env(), capture_output=True, text=True)  # fmt: skip
            if res.returncode != 0:
                raise RuntimeError(f"fixture training failed:\n{res.stderr[-3000:]}")
        self.model, self.ckpt = self.run / "final" / "model.safetensors", self.run / "checkpoints" / "step-000004"


KINDS = {  # kind -> (share of the cases, at least this many when the kind is selected)
    "recipe": (0.40, 1), "recipe_cli": (0.10, 1), "shards": (0.17, 1), "weights": (0.13, 1),
    "annotations": (0.15, 1), "kill_shard": (0.02, 1), "kill_train": (0.015, 1), "kill_worker": (0.005, 1),
}  # fmt: skip


def run_case(kind: str, rng: random.Random, fx: Fixtures, work: Path) -> str:
    if kind in ("recipe", "recipe_cli"):
        return case_recipe(rng, work, via_cli=kind == "recipe_cli")
    if kind == "shards":
        return case_shards(rng, work, fx.shards)
    if kind == "weights":
        return case_weights(rng, work, fx.model, fx.ckpt)
    if kind == "annotations":
        return case_annotations(rng, work, fx.data, fx.old_shards)
    if kind == "kill_shard":
        return case_kill_shard(rng, work, fx.data, fx.old_shards, fx.new_snapshot)
    if kind == "kill_train":
        return case_kill_train(rng, work, fx.shards)
    return case_kill_worker(rng, work, fx.data)


def plan_cases(total: int, kinds: list[str]) -> list[str]:
    """How many cases of each kind, in a fixed interleaved order."""
    shares = {k: KINDS[k][0] for k in kinds}
    scale = sum(shares.values())
    counts = {k: max(KINDS[k][1], round(total * shares[k] / scale)) for k in kinds}
    order = [k for k in kinds for _ in range(counts[k])]
    random.Random(0).shuffle(order)
    return order


def run(
    total: int,
    seed: int,
    work: Path,
    kinds: list[str] | None = None,
    fx: Fixtures | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run `total` cases; returns {"cases", per-outcome counts, "by_kind": {kind: Counter}, "failures": [...]}."""
    kinds = kinds or list(KINDS)
    order = plan_cases(total, kinds)
    fx = fx or Fixtures(work, need_weights="weights" in kinds)
    by_kind: dict[str, Counter] = {k: Counter() for k in kinds}
    failures = []
    for i, kind in enumerate(order):
        rng = random.Random(f"{seed}-{i}")
        outcome = run_case(kind, rng, fx, work)
        by_kind[kind][outcome] += 1
        if outcome in ("traceback", "hang", "mixed"):
            failures.append(f"case {i} ({kind}, rng seed '{seed}-{i}'): {outcome}")
            log(failures[-1])
        if (i + 1) % 100 == 0:
            log(f"{i + 1}/{len(order)} cases")
    totals = Counter()
    for c in by_kind.values():
        totals.update(c)
    return {"cases": len(order), **{o: totals[o] for o in OUTCOMES}, "by_kind": by_kind, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1500, help="total cases (split over the kinds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every case's generator")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--kinds", nargs="*", choices=sorted(KINDS), default=None, help="only these case kinds")
    parser.add_argument("--case-seconds", type=float, default=CASE_SECONDS, help="in-process time limit per case")
    args = parser.parse_args()
    globals()["CASE_SECONDS"] = args.case_seconds
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run(args.cases, args.seed, work, args.kinds)
    print(f"\n{result['cases']} cases in {time.monotonic() - start:.0f} s (seed {args.seed})")
    print(f"{'kind':<12} " + " ".join(f"{o:>9}" for o in OUTCOMES))
    for kind, c in result["by_kind"].items():
        print(f"{kind:<12} " + " ".join(f"{c[o]:>9}" for o in OUTCOMES))
    print(f"{'total':<12} " + " ".join(f"{result[o]:>9}" for o in OUTCOMES))
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
