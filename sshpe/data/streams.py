"""Readers of sshpe shards: tar indexing, sample decoding, the infinite per-rank training stream and the
read-once validation dataset (DESIGN decisions 2 and 6). Rank and DataLoader-worker splitting is decided here
and nowhere else; CPU workers only decode, every augmentation happens later on the training device.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg

from sshpe.data.locations import LocationError, ShardLocation, shard_location
from sshpe.data.shard_format import ShardFormatError, check_record
from sshpe.data.shard_writer import MANIFEST_NAME, read_manifest, sha256_file

Unit = tuple[int, int]  # (shard index in the split, sample position in the shard)


# ---------------------------------------------------------------------------------------------------------------
# Tar index and sample decoding
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleLoc:
    """Where one sample's members lie in its tar: byte (offset, size) of the `jpg` and the `json` member."""

    key: str
    jpg: tuple[int, int]
    json: tuple[int, int]


class ShardError(ShardFormatError):
    """A shard that cannot be read as its manifest describes; the message names the shard (and sample) and says
    what to do. Raised in DataLoader workers too, where `OneLineErrors` turns it back into its own one line."""


_INDEX_CACHE: dict[tuple, list[SampleLoc]] = {}
_VERIFIED: set[tuple] = set()  # file versions whose sha256 matched the manifest in this process
_FDS: dict[str, tuple[tuple, int]] = {}  # path -> (file version incl. pid, open descriptor)


def _version(path: Path) -> tuple:
    """What identifies one written version of a shard file (rewrites replace the inode or the mtime)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ShardError(f"shard {path} does not exist; run `sshpe shard` again") from None
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def verify_shard(path: Path, sha256: str) -> None:
    """Check a shard's bytes against the manifest's sha256, once per process and file version (then cached).

    Raises:
        ShardError: the checksum differs (the tar was replaced or damaged after the manifest was written).
    """
    version = _version(path)
    if version in _VERIFIED:
        return
    if sha256_file(path) != sha256:
        raise ShardError(
            f"shard {path} does not match its manifest (sha256 differs): it was changed or damaged after "
            "`sshpe shard` wrote it; run `sshpe shard` again"
        )
    _VERIFIED.add(version)


def index_shard(path: Path) -> list[SampleLoc]:
    """Sample locations of a shard in tar order, from the tar headers; cached per process and file version."""
    path = Path(path)
    version = _version(path)
    if version not in _INDEX_CACHE:
        _INDEX_CACHE[version] = _index_tar(str(path), path=path)
    return _INDEX_CACHE[version]


def _index_tar(where: str, *, path: Path | None = None, data: bytes | None = None) -> list[SampleLoc]:
    """Sample locations in tar order of the tar at `path` or in `data` (`where` names it in errors)."""
    members: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, mode="r:", fileobj=None if data is None else io.BytesIO(data)) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = (m.offset_data, m.size)
    except tarfile.TarError as err:
        raise ShardError(f"shard {where} is not a readable tar ({err}); run `sshpe shard` again") from None
    locs = []
    for key, parts in members.items():
        if "jpg" not in parts or "json" not in parts:
            raise ShardError(f"corrupt sample {key!r} in shard {where}: it lacks a jpg or json member")
        locs.append(SampleLoc(key, parts["jpg"], parts["json"]))
    return locs


@dataclass(frozen=True)
class FetchedShard:
    """A remote shard held whole in memory, checked against its manifest entry and indexed; `str()` is its URL."""

    url: str
    data: bytes
    locs: list[SampleLoc]

    def __str__(self) -> str:
        return self.url


_FETCHED: OrderedDict[tuple[str, str], FetchedShard] = OrderedDict()  # (url, sha256) -> shard, least recent first
MAX_FETCHED = 2  # remote shards kept in memory per process: a worker reads one shard's samples consecutively


def fetch_shard(location: ShardLocation, name: str, sha256: str, size: int | None) -> FetchedShard:
    """Shard `name` under a remote base, fetched whole on first use and kept among the `MAX_FETCHED` most recently
    used of this process; its byte size and sha256 are checked against the manifest's on every fetch.

    Raises:
        ShardError: the shard cannot be fetched, or its bytes differ from the manifest (names the URL).
    """
    url = location.where(name)
    key = (url, sha256)
    if key in _FETCHED:
        _FETCHED.move_to_end(key)
        return _FETCHED[key]
    try:
        data = location.read_bytes(name)
    except LocationError as err:
        raise ShardError(str(err)) from None
    if size is not None and len(data) != size:
        raise ShardError(
            f"shard {url} has {len(data)} bytes but the manifest says {size}: it was changed or truncated after "
            "`sshpe shard` wrote it, or its upload is incomplete; upload the shard folder again"
        )
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ShardError(
            f"shard {url} does not match its manifest (sha256 differs): it was changed or damaged after `sshpe "
            "shard` wrote it, or its upload is incomplete; upload the shard folder again"
        )
    _FETCHED[key] = shard = FetchedShard(url, data, _index_tar(url, data=data))
    while len(_FETCHED) > MAX_FETCHED:
        _FETCHED.popitem(last=False)
    return shard


def _read_bytes(path: Path | FetchedShard, span: tuple[int, int]) -> bytes:
    """`size` bytes at `offset` of a shard: sliced from a fetched remote shard, or read from a local file through a
    descriptor cached per process and file version (pread)."""
    if isinstance(path, FetchedShard):
        offset, size = span
        return path.data[offset : offset + size]
    version = (os.getpid(), *_version(path))
    cached = _FDS.get(str(path))
    if cached is None or cached[0] != version:
        if cached is not None and cached[0][0] == os.getpid():
            os.close(cached[1])
        _FDS[str(path)] = cached = (version, os.open(path, os.O_RDONLY))
    offset, size = span
    return os.pread(cached[1], size, offset)


def read_sample(
    path: Path | FetchedShard, loc: SampleLoc, num_joints: int | None = None, *, decode: bool = True
) -> dict:
    """Read one sample, decoding its JPEG (or, with `decode=False`, only checking that its bytes are a whole JPEG);
    with `num_joints` its record is also checked (`shard_format.check_record`).

    Returns:
        {"canvas": (H, W, 3) uint8 RGB canvas, or "jpeg": its (N,) uint8 encoded bytes; "record": the JSON record
        (frames in shards/README.md)}.
    """
    jpg = np.frombuffer(_read_bytes(path, loc.jpg), dtype=np.uint8)
    if decode:
        canvas = cv2.imdecode(jpg, cv2.IMREAD_COLOR) if jpg.size else None
        ok = canvas is not None
    else:  # the device decodes: catch what would fail there cheaply, here, where the shard can be named
        ok = jpg.size > 4 and jpg[0] == 0xFF and jpg[1] == 0xD8 and jpg[-2] == 0xFF and jpg[-1] == 0xD9
    if not ok:
        raise ShardError(f"corrupt sample {loc.key!r} in shard {path}: its JPEG does not decode; re-run `sshpe shard`")
    try:
        record = json.loads(_read_bytes(path, loc.json))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ShardError(f"corrupt sample {loc.key!r} in shard {path}: bad JSON record ({err}); re-run `sshpe shard`"
                         ) from None  # fmt: skip
    if num_joints is not None:
        check_record(record, num_joints=num_joints, shard=path, key=loc.key)
    if not decode:
        return {"jpeg": jpg, "record": record}
    return {"canvas": cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB), "record": record}


def pad_stack(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack (H_i, W_i, 3) canvases into a (B, 3, H_max, W_max) batch, each at the top left, zeros elsewhere.

    Canvas coordinates are pixels from the top-left corner, so every record's maps stay valid, and a warp reads
    zeros beyond a canvas as it would beyond the canvas alone (`geometry.warp_images`). The batch is stored
    channels-last (a (B, H, W, 3) buffer seen as (B, 3, H, W)): filling it copies whole rows of each canvas, where a
    contiguous (B, 3, H, W) batch would cost a transposing copy of every pixel.
    """
    h = max(int(im.shape[0]) for im in images)
    w = max(int(im.shape[1]) for im in images)
    out = torch.empty((len(images), h, w, images[0].shape[2]), dtype=images[0].dtype, device=images[0].device)
    for i, im in enumerate(images):
        hi, wi = int(im.shape[0]), int(im.shape[1])
        out[i, :hi, :wi] = im
        out[i, hi:] = 0
        out[i, :hi, wi:] = 0
    return out.permute(0, 3, 1, 2)


def _pack_jpegs(jpegs: list[np.ndarray]) -> dict:
    """JPEG bytes of a batch as one flat tensor and offsets (one shared-memory block through the DataLoader)."""
    offsets = np.zeros(len(jpegs) + 1, dtype=np.int64)
    np.cumsum([j.size for j in jpegs], out=offsets[1:])
    return {"jpeg": torch.from_numpy(np.concatenate(jpegs)), "jpeg_offsets": torch.from_numpy(offsets)}


def decode_batch(batch: dict, device: torch.device | str) -> dict:
    """Finish a batch collated with `decode=False`: decode its JPEGs on `device` (nvJPEG, batched, on CUDA; libjpeg
    on CPU, the same pixels as the workers' OpenCV decode) into "canvas" (B, 3, H_max, W_max) uint8 RGB. A batch
    that holds canvases already is returned as it is.

    Raises:
        ShardError: a JPEG does not decode; the message names the sample keys of the batch.
    """
    if "jpeg" not in batch:
        return batch
    out = dict(batch)
    data, offsets = out.pop("jpeg"), out.pop("jpeg_offsets").tolist()
    chunks = [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    device = torch.device(device)
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec (still supported)
            warnings.simplefilter("ignore", DeprecationWarning)
            images = decode_jpeg(chunks, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as err:
        raise ShardError(f"a JPEG of the batch with samples {out['key']} does not decode on {device} ({err}); "
                         "re-run `sshpe shard`, or set data.decode: worker") from None  # fmt: skip
    out["canvas"] = pad_stack([im.permute(1, 2, 0) for im in images])
    return out


def decode_in_workers(mode: str, device: torch.device | str) -> bool:
    """Resolve `data.decode` (auto | worker | device) for a training device: True = the DataLoader workers decode."""
    if mode not in ("auto", "worker", "device"):
        raise ValueError(f"data.decode must be auto, worker or device, got {mode!r}")
    return mode == "worker" or (mode == "auto" and torch.device(device).type != "cuda")


def collate(samples: list[dict]) -> dict:
    """Stack decoded samples into a batch.

    Returns:
        "canvas" (B, 3, H, W) uint8 RGB, stored channels-last (canvases of different sizes padded to the largest,
        `pad_stack`) or, for samples read with `decode=False`, "jpeg" (N,) uint8 bytes and "jpeg_offsets" (B + 1,)
        int64 that `decode_batch` turns into "canvas" on the training device; "kpts" (B, K, 2) float32 canvas px;
        "vis" (B, K) float32 COCO v; "center" (B, 2) float64 image px; "scale" (B, 2) float64 (200-px units);
        "canvas_to_image" (B, 2, 3) float64; "score" (B,) float32; "raw_bbox" (B, 4) float64 the source's box
        (x, y, w, h) in image px; "image_id", "ann_id" (B,) int64; "key" list[str]. When every record has the
        unlabeled split's hidden ground truth, also "hidden_kpts" (B, K, 2) canvas px and "hidden_vis" (B, K): for
        pseudo-label metrics only (`sshpe.step.train_step` never reads them).
    """
    recs = [s["record"] for s in samples]
    if "jpeg" in samples[0]:
        pixels = _pack_jpegs([s["jpeg"] for s in samples])
    else:
        pixels = {"canvas": pad_stack([torch.from_numpy(s["canvas"]) for s in samples])}
    kpts = torch.tensor([r["keypoints"] for r in recs], dtype=torch.float32)
    hidden = {}
    if all("hidden_keypoints" in r for r in recs):
        h = torch.tensor([r["hidden_keypoints"] for r in recs], dtype=torch.float32)
        hidden = {"hidden_kpts": h[..., :2].contiguous(), "hidden_vis": h[..., 2].contiguous()}
    fields = {
        "kpts": kpts[..., :2].contiguous(),
        "vis": kpts[..., 2].contiguous(),
        "center": torch.tensor([r["center"] for r in recs], dtype=torch.float64),
        "scale": torch.tensor([r["scale"] for r in recs], dtype=torch.float64),
        "canvas_to_image": torch.tensor([r["canvas_to_image"] for r in recs], dtype=torch.float64),
        "score": torch.tensor([r["score"] for r in recs], dtype=torch.float32),
        # shards written before raw_bbox existed: the (cleaned) box
        "raw_bbox": torch.tensor([r["raw_bbox"] if "raw_bbox" in r else r["bbox"] for r in recs], dtype=torch.float64),
        "image_id": torch.tensor([r["image_id"] for r in recs], dtype=torch.int64),
        "ann_id": torch.tensor([r["ann_id"] for r in recs], dtype=torch.int64),
        "key": [r["key"] for r in recs],
    }
    return hidden | pixels | fields


class _SplitReader:
    """The shards of one split of a manifest, checked against it: for a local folder existence and byte size at
    construction, sha256 at each shard's first read in a process; for a remote base (`sshpe.data.locations`) size
    and sha256 at each fetch (`fetch_shard`); every record's schema at read. Reads samples by (shard, position)."""

    def __init__(self, manifest_dir: str | Path | ShardLocation, split: str, *, decode: bool = True) -> None:
        self.decode = decode
        self.location = shard_location(manifest_dir)
        self.manifest = read_manifest(self.location)
        if split not in self.manifest["splits"]:
            raise ValueError(
                f"split {split!r} not in {self.location.where(MANIFEST_NAME)} (it has "
                f"{sorted(self.manifest['splits'])}); run `sshpe shard ... ` for that split"
            )
        self.split = split
        entries = self.manifest["splits"][split]["shards"]
        self.names = [e["name"] for e in entries]
        self.counts = [int(e["count"]) for e in entries]
        self.sha256 = [e["sha256"] for e in entries]
        self.sizes = [e["size"] for e in entries]
        self.num_joints = len(self.manifest["schema"]["names"])
        if self.location.is_remote:
            return  # fetched whole when first read: size and sha256 are checked then
        self.paths = [self.location.folder / name for name in self.names]
        for p, size in zip(self.paths, self.sizes):
            if not p.is_file():
                raise ShardError(f"shard {p} listed in the manifest is missing; run `sshpe shard` again")
            if size is not None and p.stat().st_size != size:
                raise ShardError(
                    f"shard {p} has {p.stat().st_size} bytes but the manifest says {size}: it was changed or "
                    "truncated after `sshpe shard` wrote it; run `sshpe shard` again"
                )

    def units(self) -> list[Unit]:
        return [(s, p) for s, n in enumerate(self.counts) for p in range(n)]

    def read(self, unit: Unit) -> dict:
        shard, pos = unit
        source, locs = self._open(shard)
        if len(locs) != self.counts[shard]:
            raise ShardError(
                f"shard {source} holds {len(locs)} samples but the manifest says {self.counts[shard]}; "
                "it is corrupt or stale, run `sshpe shard` again"
            )
        return read_sample(source, locs[pos], self.num_joints, decode=self.decode)

    def _open(self, shard: int) -> tuple[Path | FetchedShard, list[SampleLoc]]:
        """Shard `shard` checked against the manifest, and its sample locations."""
        if self.location.is_remote:
            fetched = fetch_shard(self.location, self.names[shard], self.sha256[shard], self.sizes[shard])
            return fetched, fetched.locs
        path = self.paths[shard]
        verify_shard(path, self.sha256[shard])
        return path, index_shard(path)


class OneLineErrors(DataLoader):
    """A DataLoader whose shard errors stay one line: a `ShardError` (or a record's `ShardFormatError`) raised in a
    worker process reaches the main process wrapped by torch ("Caught ShardError in DataLoader worker process 0
    ... Original Traceback ..."); it is re-raised here as the worker's own message (shard, sample key, fix)."""

    def __iter__(self) -> Iterator:
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except ShardFormatError as err:
                raise type(err)(worker_message(str(err))) from None
            yield batch


def worker_message(text: str) -> str:
    """The original message inside torch's wrapped worker exception text (unchanged when it is not wrapped)."""
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().rsplit("\n", 1)[-1]  # "sshpe.data.streams.ShardError: <message>"
    return last.split(": ", 1)[1] if ": " in last else last


# ---------------------------------------------------------------------------------------------------------------
# Training stream
# ---------------------------------------------------------------------------------------------------------------


def partition_units(counts: list[int], rank: int, world_size: int, worker: int, num_workers: int) -> list[Unit]:
    """The (shard, position) units one (rank, worker) reads: whole shards round-robin when there are at least
    world_size * num_workers shards, otherwise every sample strided; first by rank, then by worker. Disjoint."""
    if len(counts) >= world_size * num_workers:
        shards = list(range(len(counts)))[rank::world_size][worker::num_workers]
        return [(s, p) for s in shards for p in range(counts[s])]
    units = [(s, p) for s, n in enumerate(counts) for p in range(n)]
    return units[rank::world_size][worker::num_workers]


def epoch_order(units: list[Unit], seed: int, rank: int, worker: int, epoch: int) -> list[Unit]:
    """One epoch's visiting order of a partition: shard order shuffled, then positions within each shard."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, rank, worker, epoch])))
    by_shard: dict[int, list[int]] = {}
    for s, p in units:
        by_shard.setdefault(s, []).append(p)
    shard_ids = sorted(by_shard)
    order = []
    for i in rng.permutation(len(shard_ids)):
        positions = by_shard[shard_ids[i]]
        order.extend((shard_ids[i], positions[j]) for j in rng.permutation(len(positions)))
    return order


class TrainStream(IterableDataset):
    """Infinite, deterministic stream of collated batches of one split for one rank.

    DataLoader batch i comes from worker i % W; with `start_batch` n, worker w plays logical worker (w + n) % W
    and skips its first (n + w) // W batches, so the output from batch n on equals an uninterrupted stream's.

    Args:
        manifest_dir: shard folder with manifest.json, or a remote base (`sshpe.data.locations.shard_location`).
        split: split name in the manifest.
        seed: run seed (>= 0); each (rank, logical worker, epoch) draws its order from SeedSequence of it.
        rank, world_size: this process's place among the data-parallel ranks.
        batch_size: samples per yielded batch (per rank).
        start_batch: DataLoader batch index to resume from.
        decode: decode the JPEGs here (in the worker); False hands their bytes over (`decode_batch`).
    """

    def __init__(
        self,
        manifest_dir: str | Path | ShardLocation,
        split: str,
        *,
        seed: int,
        rank: int,
        world_size: int,
        batch_size: int,
        start_batch: int = 0,
        decode: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if batch_size <= 0 or start_batch < 0 or seed < 0:
            raise ValueError(
                f"need batch_size > 0, start_batch >= 0, seed >= 0; got {batch_size}, {start_batch}, {seed}"
            )
        self.reader = _SplitReader(manifest_dir, split, decode=decode)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batch_size, self.start_batch = batch_size, start_batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        num_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        logical = (worker + self.start_batch) % num_workers
        units = partition_units(self.reader.counts, self.rank, self.world_size, logical, num_workers)
        if not units:
            raise ShardError(
                f"split {self.reader.split!r} has {sum(self.reader.counts)} samples, too few for world_size "
                f"{self.world_size} x {num_workers} workers; use fewer workers or more data"
            )
        skip = (self.start_batch + worker) // num_workers * self.batch_size  # samples, O(1)
        epoch, offset = divmod(skip, len(units))
        batch: list[dict] = []
        while True:
            order = epoch_order(units, self.seed, self.rank, logical, epoch)
            for unit in order[offset:]:
                batch.append(self.reader.read(unit))
                if len(batch) == self.batch_size:
                    yield collate(batch)
                    batch = []
            epoch, offset = epoch + 1, 0


def make_train_loader(
    manifest_dir: str | Path | ShardLocation,
    split: str,
    *,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    num_workers: int,
    start_batch: int = 0,
    decode: bool = True,
) -> DataLoader:
    """DataLoader over a `TrainStream` (the stream batches; persistent workers keep their epoch position)."""
    stream = TrainStream(
        manifest_dir,
        split,
        seed=seed,
        rank=rank,
        world_size=world_size,
        batch_size=batch_size,
        start_batch=start_batch,
        decode=decode,
    )
    return OneLineErrors(
        stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=False
    )


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


class ValDataset(Dataset):
    """Every sample of a split exactly once over all ranks: rank r reads global samples r, r + world_size, ...

    Items are `read_sample`'s {"canvas": (H, W, 3) uint8 RGB (or "jpeg" bytes with `decode=False`), "record": dict};
    batch them with `collate`.
    """

    def __init__(
        self,
        manifest_dir: str | Path | ShardLocation,
        split: str = "val",
        *,
        rank: int = 0,
        world_size: int = 1,
        decode: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.reader = _SplitReader(manifest_dir, split, decode=decode)
        self.units = self.reader.units()[rank::world_size]

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, i: int) -> dict:
        return self.reader.read(self.units[i])


def make_val_loader(
    manifest_dir: str | Path | ShardLocation,
    split: str = "val",
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    num_workers: int,
    decode: bool = True,
) -> DataLoader:
    """Ordered, unpadded DataLoader over this rank's `ValDataset` share (`decode`: as `TrainStream`)."""
    ds = ValDataset(manifest_dir, split, rank=rank, world_size=world_size, decode=decode)
    return OneLineErrors(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate, drop_last=False
    )
