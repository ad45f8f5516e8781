"""Samples out of shard tars: the tar index, member bytes (local files by byte offset, remote shards fetched whole),
checks against the manifest (size, sha256, records) and one sample's JPEG and record (shards/README.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sshpe.data.locations import LocationError, ShardLocation
from sshpe.data.shard_format import ShardFormatError, check_record
from sshpe.data.shard_writer import sha256_file


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
