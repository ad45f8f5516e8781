"""Readers of sshpe shards: the infinite per-rank training stream and the read-once validation dataset (DESIGN
decisions 2 and 6). Rank and DataLoader-worker splitting is decided here and nowhere else; CPU workers only read (and,
with `data.decode: worker`, decode) samples, every augmentation happens later on the training device.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from sshpe.data.batches import collate
from sshpe.data.locations import ShardLocation, shard_location
from sshpe.data.shard_access import (
    FetchedShard,
    SampleLoc,
    ShardError,
    fetch_shard,
    index_shard,
    read_sample,
    verify_shard,
)
from sshpe.data.shard_format import ShardFormatError
from sshpe.data.shard_writer import MANIFEST_NAME, read_manifest

Unit = tuple[int, int]  # (shard index in the split, sample position in the shard)


# ---------------------------------------------------------------------------------------------------------------
# One split of a manifest
# ---------------------------------------------------------------------------------------------------------------


class _SplitReader:
    """The shards of one split of a manifest, checked against it: for a local folder existence and byte size at
    construction, sha256 at each shard's first read in a process; for a remote base (`sshpe.data.locations`) size
    and sha256 at each fetch (`shard_access.fetch_shard`); every record's schema at read. Reads samples by
    (shard, position)."""

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
    last = text.rstrip().rsplit("\n", 1)[-1]  # "sshpe.data.shard_access.ShardError: <message>"
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
        decode: decode the JPEGs here (in the worker); False hands their bytes over (`batches.decode_batch`).
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
