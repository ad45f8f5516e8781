"""Shard readers: rank/worker partitions, deterministic infinite streams, exact resume, read-once validation."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from _fixtures_coco import INPUT_HW, K, make_coco, shard_fixture

from sshpe import geometry
from sshpe.data.batches import collate, decode_batch, decode_in_workers
from sshpe.data.shard_access import ShardError, index_shard, read_sample
from sshpe.data.streams import TrainStream, ValDataset, make_train_loader, make_val_loader, partition_units

N = 12  # valid instances in the fixture


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory) -> dict[str, Path]:
    """The same 12 samples as 12 one-sample shards ("many"), 3 shards of 5/5/2 ("few") and one shard ("one")."""
    root = tmp_path_factory.mktemp("streams")
    fx = make_coco(root / "coco")
    dirs = {"many": root / "many", "few": root / "few", "one": root / "one"}
    for name, size in (("many", 1), ("few", 5), ("one", 100)):
        shard_fixture(fx, dirs[name], shard_size=size, split="train")
        shard_fixture(fx, dirs[name], shard_size=size, split="val")
    return dirs


def _keys(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def _take(loader_or_stream, n: int) -> list[dict]:
    return list(itertools.islice(iter(loader_or_stream), n))


def _partition_keys(shard_dir: Path, *, rank: int, world_size: int, num_workers: int) -> set[str]:
    """Keys of every unit one rank owns over all its DataLoader workers."""
    shards = sorted(shard_dir.glob("toy-train-*.tar"))
    counts = [len(index_shard(s)) for s in shards]
    w_total = max(1, num_workers)
    units = [u for w in range(w_total) for u in partition_units(counts, rank, world_size, w, w_total)]
    return {index_shard(shards[s])[p].key for s, p in units}


def test_collate_shapes_dtypes_and_frames(shard_dirs):
    ds = ValDataset(shard_dirs["few"], "val")
    samples = [ds[i] for i in range(3)]
    b = collate(samples)
    sizes = [s["canvas"].shape[:2] for s in samples]
    assert len(set(sizes)) > 1  # canvases of different sizes: padded to the largest, each at the top left
    h, w = max(hw[0] for hw in sizes), max(hw[1] for hw in sizes)
    assert b["canvas"].shape == (3, 3, h, w) and b["canvas"].dtype == torch.uint8 and max(h, w) <= geometry.canvas_side(
        INPUT_HW)  # fmt: skip
    assert b["canvas"].permute(0, 2, 3, 1).is_contiguous()  # channels-last storage: filled row by row, no transpose
    for i, (hi, wi) in enumerate(sizes):
        assert torch.equal(b["canvas"][i, :, :hi, :wi], torch.from_numpy(samples[i]["canvas"]).permute(2, 0, 1))
        assert not b["canvas"][i, :, hi:].any() and not b["canvas"][i, :, :, wi:].any()
    assert b["kpts"].shape == (3, K, 2) and b["kpts"].dtype == torch.float32
    assert b["vis"].shape == (3, K) and b["vis"].dtype == torch.float32
    assert b["center"].dtype == b["scale"].dtype == b["canvas_to_image"].dtype == torch.float64
    assert b["canvas_to_image"].shape == (3, 2, 3) and b["score"].dtype == torch.float32
    assert b["image_id"].dtype == b["ann_id"].dtype == torch.int64 and len(b["key"]) == 3
    rec = samples[2]["record"]
    assert b["kpts"][2].tolist() == [[pytest.approx(x), pytest.approx(y)] for x, y, _ in rec["keypoints"]]
    assert b["vis"][2].tolist() == [v for _, _, v in rec["keypoints"]]
    assert b["ann_id"][2].item() == rec["ann_id"] and b["key"][2] == rec["key"]


def test_device_decode_equals_worker_decode(shard_dirs):
    """`decode=False` hands the JPEG bytes over; `decode_batch` on the device gives the workers' pixels exactly."""
    kw = dict(batch_size=5, rank=0, world_size=1, num_workers=0)
    worker = list(make_val_loader(shard_dirs["few"], "val", **kw))
    device = list(make_val_loader(shard_dirs["few"], "val", decode=False, **kw))
    assert [len(b["key"]) for b in device] == [5, 5, 2]
    for a, b in zip(worker, device):
        assert "canvas" not in b and b["jpeg"].dtype == torch.uint8 and b["jpeg_offsets"].shape == (len(b["key"]) + 1,)
        decoded = decode_batch(b, "cpu")
        assert set(decoded) == set(a) and torch.equal(decoded["canvas"], a["canvas"])
        assert all(torch.equal(decoded[k], a[k]) for k in a if torch.is_tensor(a[k]))
    assert decode_batch(worker[0], "cpu") is worker[0]  # already decoded: unchanged
    assert [decode_in_workers(m, d) for m, d in [("auto", "cpu"), ("auto", "cuda"), ("worker", "cuda"),
                                                 ("device", "cpu")]] == [True, False, True, False]  # fmt: skip


def test_device_decode_names_the_samples_of_a_bad_jpeg(shard_dirs):
    batch = next(iter(make_val_loader(shard_dirs["few"], "val", batch_size=2, rank=0, world_size=1, num_workers=0,
                                      decode=False)))  # fmt: skip
    broken = batch["jpeg"].clone()
    end = int(batch["jpeg_offsets"][1])
    broken[200 : end - 2] = 0  # the scan data of the first JPEG, markers kept
    broken[2:20] = 0  # and its header
    with pytest.raises(ShardError, match=rf"{batch['key'][0]}.*does not decode on cpu.*data.decode: worker"):
        decode_batch(batch | {"jpeg": broken}, "cpu")


@pytest.mark.parametrize("layout", ["many", "one"])  # whole shards per rank / strided samples
def test_two_ranks_read_disjoint_samples_covering_the_split(shard_dirs, layout):
    per_rank = []
    for rank in range(2):
        stream = TrainStream(shard_dirs[layout], "train", seed=3, rank=rank, world_size=2, batch_size=1)
        epoch_len = len(partition_units(stream.reader.counts, rank, 2, 0, 1))
        keys = _keys(_take(stream, 2 * epoch_len))
        assert sorted(keys[:epoch_len]) == sorted(keys[epoch_len:])  # each epoch visits the partition once
        assert len(set(keys[:epoch_len])) == epoch_len
        assert keys[:epoch_len] != keys[epoch_len:]  # ...in a new order
        per_rank.append(set(keys))
    assert not per_rank[0] & per_rank[1]
    all_keys = {s["record"]["key"] for s in ValDataset(shard_dirs[layout], "train")}
    assert per_rank[0] | per_rank[1] == all_keys and len(all_keys) == N


@pytest.mark.parametrize("counts", [[1] * 12, [5, 5, 2], [12]])
def test_rank_and_worker_partitions_are_disjoint_and_complete(counts):
    units = [u for r in range(2) for w in range(3) for u in partition_units(counts, r, 2, w, 3)]
    assert sorted(units) == [(s, p) for s, n in enumerate(counts) for p in range(n)]
    if len(counts) >= 6:  # whole shards: a shard never straddles two readers
        owners = {s: (r, w) for r in range(2) for w in range(3) for s, _ in partition_units(counts, r, 2, w, 3)}
        assert len(owners) == len(counts)


def test_streams_are_deterministic_per_seed_and_rank(shard_dirs):
    def keys(seed: int, rank: int) -> list[str]:
        stream = TrainStream(shard_dirs["few"], "train", seed=seed, rank=rank, world_size=2, batch_size=2)
        return _keys(_take(stream, 6))

    a, b = (_take(TrainStream(shard_dirs["few"], "train", seed=5, rank=0, world_size=2, batch_size=2), 3)
            for _ in range(2))  # fmt: skip
    assert all(torch.equal(x["canvas"], y["canvas"]) and x["key"] == y["key"] for x, y in zip(a, b))
    assert keys(5, 0) == keys(5, 0)
    assert keys(5, 0) != keys(6, 0)
    assert set(keys(5, 0)).isdisjoint(keys(5, 1))


@pytest.mark.parametrize("num_workers, layout", [(0, "few"), (2, "few"), (2, "many")])
def test_start_batch_resumes_the_uninterrupted_stream(shard_dirs, num_workers, layout):
    kw = dict(batch_size=3, seed=11, rank=1, world_size=2, num_workers=num_workers)
    full = _take(make_train_loader(shard_dirs[layout], "train", **kw), 9)  # several epochs per worker
    assert set(_keys(full)) == _partition_keys(shard_dirs[layout], rank=1, world_size=2, num_workers=num_workers)
    for n in (1, 4):
        resumed = _take(make_train_loader(shard_dirs[layout], "train", start_batch=n, **kw), 9 - n)
        assert [b["key"] for b in resumed] == [b["key"] for b in full[n:]]
        assert all(torch.equal(x["canvas"], y["canvas"]) for x, y in zip(resumed, full[n:]))


def test_val_over_two_ranks_reads_every_sample_once(shard_dirs):
    keys = []
    for rank in range(2):
        loader = make_val_loader(shard_dirs["few"], batch_size=4, rank=rank, world_size=2, num_workers=0)
        keys += _keys(loader)
    all_keys = [loc.key for s in sorted(shard_dirs["few"].glob("toy-val-*.tar")) for loc in index_shard(s)]
    assert sorted(keys) == sorted(all_keys) and len(keys) == N


def test_reader_errors_name_the_file(shard_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="run `sshpe shard` first"):
        ValDataset(tmp_path, "val")
    with pytest.raises(ValueError, match=r"split 'test' not in .*manifest.json"):
        TrainStream(shard_dirs["few"], "test", seed=0, rank=0, world_size=1, batch_size=2)

    manifest = json.loads((shard_dirs["few"] / "manifest.json").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="toy-val-000000.tar listed in the manifest is missing"):
        ValDataset(broken, "val")

    for s in manifest["splits"]["val"]["shards"]:
        (broken / s["name"]).write_bytes((shard_dirs["few"] / s["name"]).read_bytes())
    shard = broken / "toy-val-000001.tar"
    loc = index_shard(shard)[2]
    data = bytearray(shard.read_bytes())
    data[loc.jpg[0] : loc.jpg[0] + loc.jpg[1]] = b"\0" * loc.jpg[1]  # same size: the tar stays readable
    shard.write_bytes(bytes(data))
    ds = ValDataset(broken, "val")
    assert ds[0]["record"]["split"] == "val"  # the untouched first shard reads fine
    with pytest.raises(ShardError, match="sha256 differs") as info:
        ds[5 + 2]  # the manifest's checksum catches the damage at the shard's first read
    assert str(shard) in str(info.value)
    with pytest.raises(ShardError) as info:
        read_sample(shard, loc)  # below the checksum, the decoder names the sample
    assert str(shard) in str(info.value) and loc.key in str(info.value) and "JPEG does not decode" in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG decoding needs a CUDA device (none here); the CPU "
                    "hand-over path is tested above and in test_e2e")  # fmt: skip
def test_cuda_decode_matches_cpu_decode(shard_dirs):
    """On CUDA, `decode_batch` decodes the batch with nvJPEG; its pixels agree with libjpeg's to within IDCT and
    chroma-upsampling rounding, and the batch comes back on the device."""
    batch = next(iter(make_val_loader(shard_dirs["few"], "val", batch_size=5, rank=0, world_size=1, num_workers=0,
                                      decode=False)))  # fmt: skip
    cpu = decode_batch(batch, "cpu")["canvas"]
    gpu = decode_batch(batch, "cuda")["canvas"]
    assert gpu.device.type == "cuda" and gpu.shape == cpu.shape and gpu.dtype == torch.uint8
    diff = (gpu.cpu().float() - cpu.float()).abs()
    assert diff.mean() < 1.0 and diff.max() <= 16
