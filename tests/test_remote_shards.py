"""Shards from anywhere: the same shard folder read over HTTP (a real server on 127.0.0.1), through fsspec and
through a `pipe:` command yields the same samples in the same order as the local read, with exact resume and
rank/worker splitting; remote failures are one line naming the URL; a short training run reads an http URL."""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import shlex
import shutil
import socket
import threading
from collections import OrderedDict
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from _fixtures_coco import make_coco, shard_fixture
from conftest import smoke_recipe
from sshpe._cli.app import app
from typer.testing import CliRunner

from sshpe.data import locations, shard_access
from sshpe.data.locations import LocationError, join_url, remote_source, shard_location
from sshpe.data.prepare import find_sources, shard_dataset
from sshpe.data.shard_access import ShardError
from sshpe.data.shard_writer import read_manifest, source_file
from sshpe.data.streams import TrainStream, ValDataset, make_train_loader
from sshpe.portable_paths import read_run_paths
from sshpe.recipe import RecipeError

LAYOUTS = {"few": 2, "one": 100}  # 6 train shards (whole shards per worker) / one shard (strided samples)


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 serving `root`; `requested` lists the paths asked for, in order."""

    def __init__(self, root: Path) -> None:
        self.requested: list[str] = []
        log = self.requested

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                log.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:  # keep pytest's output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _serve(root: Path, request) -> _Server:
    server = _Server(root)
    request.addfinalizer(server.close)
    return server


@pytest.fixture(scope="module")
def served(tmp_path_factory, request) -> tuple[Path, _Server]:
    """root/{coco, few, one}: one toy COCO set sharded twice (train and val splits), served over HTTP."""
    root = tmp_path_factory.mktemp("served")
    fx = make_coco(root / "coco")
    for name, size in LAYOUTS.items():
        shard_fixture(fx, root / name, shard_size=size, split="train")
        shard_fixture(fx, root / name, shard_size=size, split="val")
    return root, _serve(root, request)


@pytest.fixture(autouse=True)
def _bounded(monkeypatch, tmp_path):
    """Short timeouts and retry waits; an empty remote-shard cache and a private source cache per test."""
    monkeypatch.setattr(locations, "HTTP_TIMEOUT_S", 10.0)
    monkeypatch.setattr(locations, "RETRY_DELAYS_S", (0.01, 0.01))
    monkeypatch.setattr(shard_access, "_FETCHED", OrderedDict())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _take(loader, n: int) -> list[dict]:
    return list(itertools.islice(iter(loader), n))


def _assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k], k


def _assert_same_samples(a: ValDataset, b: ValDataset) -> None:
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        x, y = a[i], b[i]
        pixels = "canvas" if "canvas" in y else "jpeg"
        assert x["record"] == y["record"] and np.array_equal(x[pixels], y[pixels])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_train_stream_over_http_equals_the_local_read(served, layout):
    root, server = served
    url = f"{server.url}/{layout}"
    kw = dict(batch_size=3, seed=7, world_size=2, num_workers=2)
    for rank in range(2):  # several epochs per worker (6 samples per rank)
        local = _take(make_train_loader(root / layout, "train", rank=rank, **kw), 6)
        _assert_same_batches(_take(make_train_loader(url, "train", rank=rank, **kw), 6), local)
    resumed = _take(make_train_loader(url, "train", rank=1, start_batch=3, **kw), 3)
    _assert_same_batches(resumed, local[3:])


def test_each_remote_shard_is_fetched_once_per_epoch(served):
    root, server = served
    stream = TrainStream(f"{server.url}/few", "train", batch_size=1, seed=3, rank=0, world_size=1)
    server.requested.clear()
    keys = [b["key"][0] for b in _take(stream, 12)]  # one epoch of the 6 shards of 2 samples
    assert sorted(keys) == sorted(s["record"]["key"] for s in ValDataset(root / "few", "train"))
    shards = [p for p in server.requested if p.endswith(".tar")]
    assert sorted(shards) == sorted(f"/few/toy-train-{i:06d}.tar" for i in range(6))


@pytest.mark.parametrize("decode", [True, False])  # canvases, or the JPEG bytes handed to the training device
def test_val_dataset_over_http_equals_the_local_read(served, decode):
    root, server = served
    for rank in range(2):
        _assert_same_samples(
            ValDataset(f"{server.url}/few/", "val", rank=rank, world_size=2, decode=decode),
            ValDataset(root / "few", "val", rank=rank, world_size=2, decode=decode),
        )


def test_pipe_and_fsspec_locations_read_like_the_local_folder(served):
    root, _ = served
    pipe = f"pipe:cat {shlex.quote(str(root / 'few'))}/{{name}}"
    memory = "memory://sshpe-test/few"
    fs = fsspec.filesystem("memory")
    for f in (root / "few").iterdir():
        fs.pipe_file(f"{memory}/{f.name}", f.read_bytes())
    try:
        for base in (pipe, memory):
            assert shard_location(base).is_remote
            _assert_same_samples(ValDataset(base, "val"), ValDataset(root / "few", "val"))
            kw = dict(batch_size=2, seed=1, rank=0, world_size=1, num_workers=0, start_batch=2)
            _assert_same_batches(_take(make_train_loader(base, "train", **kw), 4),
                                 _take(make_train_loader(root / "few", "train", **kw), 4))  # fmt: skip
    finally:
        fs.rm("memory://sshpe-test", recursive=True)


def test_locations_parse_and_join():
    assert shard_location("shards/coco").kind == "local" and not shard_location("shards/coco").is_remote
    assert shard_location("data:v1/shards").kind == "local"  # a colon alone is not a scheme
    assert shard_location("file:///data/shards").base == "/data/shards"
    assert shard_location("https://h/s").kind == "http" and shard_location("s3://b/s").kind == "fsspec"
    assert shard_location("pipe:aws s3 cp s3://b/s/{name} -").where("x.tar") == "aws s3 cp s3://b/s/x.tar -"
    with pytest.raises(ValueError, match=r"needs \{name\}"):
        shard_location("pipe:cat shards/manifest.json")
    assert join_url("http://h:1/a/shards/", "../ann/val.json") == "http://h:1/a/ann/val.json"
    assert join_url("https://h/shards?sig=x", "m.json") == "https://h/shards/m.json?sig=x"  # a signed token stays
    assert join_url("s3://bucket/s", "t.tar") == "s3://bucket/s/t.tar"


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_remote_failures_are_one_line_naming_the_url(served, tmp_path, request):
    root, server = served
    with pytest.raises(LocationError, match="HTTP 404") as err:
        read_manifest(f"{server.url}/nowhere")
    assert f"{server.url}/nowhere/manifest.json" in _one_line(err)

    damaged = tmp_path / "damaged"
    shutil.copytree(root / "few", damaged)
    tar = damaged / "toy-val-000001.tar"
    data = bytearray(tar.read_bytes())
    data[1000] ^= 0xFF  # same size: only the checksum sees it
    tar.write_bytes(bytes(data))
    other = _serve(tmp_path, request)
    ds = ValDataset(f"{other.url}/damaged", "val")
    assert ds[0]["record"]["split"] == "val"  # the untouched first shard reads fine
    with pytest.raises(ShardError, match="sha256 differs") as err:
        ds[2]
    assert f"{other.url}/damaged/toy-val-000001.tar" in _one_line(err)
    tar.write_bytes(bytes(data[:-512]))  # a truncated upload
    with pytest.raises(ShardError, match="bytes but the manifest says") as err:
        ValDataset(f"{other.url}/damaged", "val")[2]
    assert "upload the shard folder again" in _one_line(err)

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LocationError, match="no answer after 3 tries") as err:
        ValDataset(f"http://127.0.0.1:{port}/few", "val")
    assert f"http://127.0.0.1:{port}/few/manifest.json" in _one_line(err)

    with pytest.raises(LocationError, match="exited with status") as err:
        read_manifest(f"pipe:cat {tmp_path}/absent/{{name}}")
    assert f"cat {tmp_path}/absent/manifest.json" in _one_line(err) and "No such file" in str(err.value)

    scheme, package = next((s, p) for s, p in locations.BACKEND_PACKAGES.items() if not _importable(p))
    with pytest.raises(LocationError, match=f"pip install {package}") as err:
        read_manifest(f"{scheme}://bucket/shards")
    assert f"{scheme}://bucket/shards/manifest.json" in _one_line(err)

    with pytest.raises(RecipeError, match=r"data.shards: .*needs \{name\}"):
        smoke_recipe("pipe:cat shards/manifest.json")


def test_shard_refuses_a_url_as_its_output(synth_root):
    for out in ("s3://bucket/shards", "pipe:cat {name}"):
        res = CliRunner().invoke(app, ["shard", str(synth_root), out])
        assert res.exit_code == 2 and "writes a local folder" in res.output and "Traceback" not in res.output
    assert not Path("s3:").exists() and not Path("pipe:cat {name}").exists()  # nothing written under the folded path


def _importable(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def test_remote_source_is_fetched_checked_and_cached(served, tmp_path):
    root, server = served
    location = shard_location(f"{server.url}/few")
    entry = dict(read_manifest(location)["sources"]["val_annotations"])
    original = Path(entry["path"])
    assert original.is_file() and remote_source(location, entry, "sources.val_annotations") == original  # here
    entry["path"] = str(tmp_path / "gone.json")  # the machine that ran `sshpe shard` is not this one
    server.requested.clear()
    got = remote_source(location, entry, "sources.val_annotations")
    assert server.requested == [f"/coco/{original.relative_to(root / 'coco').as_posix()}"]  # {base}/../coco/...
    assert got.read_bytes() == original.read_bytes() and got.is_relative_to(tmp_path / "cache")
    server.requested.clear()
    assert remote_source(location, entry, "sources.val_annotations") == got and not server.requested  # cached
    entry["sha256"] = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(LocationError, match="sha256 differs") as err:
        remote_source(location, entry, "sources.val_annotations")
    assert join_url(location.base, entry["relative"]) in _one_line(err)


def test_training_on_an_http_url_trains_and_evaluates(synth_root, tmp_path, request, monkeypatch):
    """Shards written on one machine (folder A), uploaded with their data (served B), A gone: train and evaluate
    from the URL; the val ground truth comes from the server too, and the run records the URL as given."""
    from sshpe.loop import fit
    from sshpe.runner import evaluate_model

    made, served_root = tmp_path / "made", tmp_path / "upload"
    shutil.copytree(synth_root, made / "data")
    shard_dataset(find_sources(made / "data"), made / "shards", dataset="synth", input_hw=(64, 64), shard_size=8,
                  progress=False)  # fmt: skip
    os.rename(made, served_root)  # the absolute paths in the manifest no longer exist here
    server = _serve(served_root, request)
    url = f"{server.url}/shards"
    manifest = read_manifest(url)
    gt = source_file(manifest, url, "val_annotations")
    relative = manifest["sources"]["val_annotations"]["relative"]
    assert gt.is_relative_to(tmp_path / "cache")
    assert gt.read_bytes() == (served_root / "shards" / relative).read_bytes()

    recipe = smoke_recipe(url, "train.duration=4")
    run = tmp_path / "run"
    stats = fit(recipe, run)
    assert 0.0 <= stats["AP"] <= 1.0
    assert read_run_paths(run)["shards"] == {"path": url}
    assert any(p.startswith("/shards/synth-labeled-") for p in server.requested)
    again, where = evaluate_model(run, None, [], None, None)  # `sshpe eval RUN` reads the same URL
    assert again == pytest.approx(stats) and url in where
