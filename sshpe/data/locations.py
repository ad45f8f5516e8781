"""Where shards live: `data.shards` parsed into a local folder or a remote base (http(s), fsspec schemes such as
s3:// and gs://, or a `pipe:` command), and whole-file reads from it. Writing shards stays local."""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sshpe.atomic import atomic_write_bytes

HTTP_TIMEOUT_S = 60.0  # per socket operation (connect, each read), not per file
RETRY_DELAYS_S = (1.0, 2.0, 4.0)  # waits before the 2nd, 3rd and 4th try of a transient failure
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
PIPE_TIMEOUT_S = 3600.0  # one whole file through a `pipe:` command
PIPE_NAME = "{name}"
STDERR_TAIL = 300  # characters of a failed command's stderr quoted in its error

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PIPE_SAFE_NAME = re.compile(r"^[A-Za-z0-9._/-]+$")  # what may be substituted into a shell command unquoted
# fsspec protocols whose backend is a separate package (named in the error when it is missing)
BACKEND_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}

Kind = Literal["local", "http", "fsspec", "pipe"]


class LocationError(ValueError):
    """A remote file that cannot be read; the message names the URL (or command) and says what to do."""


@dataclass(frozen=True)
class ShardLocation:
    """A shard folder: `base` is a local path, a URL (`kind` "http" or "fsspec") or a `pipe:` command template in
    which `{name}` stands for the file name (`manifest.json`, a shard, a source file's relative path)."""

    base: str
    kind: Kind

    @property
    def is_remote(self) -> bool:
        return self.kind != "local"

    @property
    def folder(self) -> Path:
        """The local folder (only for a local location)."""
        assert self.kind == "local", f"{self.base} is not a local folder"
        return Path(self.base)

    def where(self, name: str) -> str:
        """The path, URL or shell command that reads file `name` (relative to the base), as errors name it."""
        if self.kind == "local":
            return str(Path(self.base) / name)
        if self.kind == "pipe":
            return self.base.removeprefix("pipe:").replace(PIPE_NAME, name)
        return join_url(self.base, name)

    def read_bytes(self, name: str) -> bytes:
        """The whole file `name` (relative to the base).

        Raises:
            FileNotFoundError: a local file is missing.
            LocationError: a remote file is missing, unreachable or its command fails (names the URL/command).
        """
        if self.kind == "local":
            return (Path(self.base) / name).read_bytes()
        if self.kind == "pipe":
            return _run_pipe(self.base, name)
        url = join_url(self.base, name)
        return _http_get(url) if self.kind == "http" else _fsspec_get(url)

    def __str__(self) -> str:
        return self.base


def shard_location(value: str | Path | ShardLocation) -> ShardLocation:
    """Parse `data.shards`: `pipe:CMD` (CMD must contain `{name}`), `http(s)://...`, any other `scheme://...` (read
    through fsspec; `file://` is a local folder), else a local folder path.

    Raises:
        ValueError: a `pipe:` command without `{name}`.
    """
    if isinstance(value, ShardLocation):
        return value
    text = os.fspath(value)
    if text.startswith("pipe:"):
        if PIPE_NAME not in text:
            raise ValueError(
                f"{text!r}: a pipe: location needs {PIPE_NAME} where the file name goes, e.g. "
                "'pipe:aws s3 cp s3://bucket/shards/{name} -'"
            )
        return ShardLocation(text, "pipe")
    match = _URL.match(text)
    if match is None:
        return ShardLocation(text, "local")
    scheme = match.group(1).lower()
    if scheme == "file":
        return ShardLocation(urllib.parse.unquote(urllib.parse.urlsplit(text).path), "local")
    return ShardLocation(text, "http" if scheme in ("http", "https") else "fsspec")


def join_url(base: str, name: str) -> str:
    """`base/name` with `.` and `..` of a relative `name` resolved in the URL path; the base's query (e.g. a
    signed-access token) is kept."""
    parts = urllib.parse.urlsplit(base)
    path = posixpath.normpath(posixpath.join(parts.path.rstrip("/") + "/", name))
    return urllib.parse.urlunsplit(parts._replace(path=path if path != "." else "/"))


# ---------------------------------------------------------------------------------------------------------------
# Transports
# ---------------------------------------------------------------------------------------------------------------


def _http_get(url: str) -> bytes:
    """GET a whole file over http(s) (standard library), retrying transient failures `len(RETRY_DELAYS_S)` times."""
    last = ""
    for attempt in range(len(RETRY_DELAYS_S) + 1):
        if attempt:
            time.sleep(RETRY_DELAYS_S[attempt - 1])
        request = urllib.request.Request(url, headers={"User-Agent": "sshpe"})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            if err.code in (404, 410):
                raise LocationError(
                    f"{url}: HTTP {err.code} {err.reason}; upload the whole shard folder there (manifest.json, the "
                    "tars and the files its sources name at the same relative paths), or fix data.shards"
                ) from None
            if err.code not in TRANSIENT_HTTP:
                raise LocationError(f"{url}: HTTP {err.code} {err.reason}; check the URL and its access rights"
                                    ) from None  # fmt: skip
            last = f"HTTP {err.code} {err.reason}"
        except urllib.error.URLError as err:
            last = str(err.reason)
        except (http.client.HTTPException, socket.timeout, ConnectionError) as err:
            last = f"{type(err).__name__}: {err}"
    raise LocationError(
        f"{url}: no answer after {len(RETRY_DELAYS_S) + 1} tries ({last}); check the host, the port and the network"
    )


def _fsspec_get(url: str) -> bytes:
    """Read a whole file through fsspec (s3://, gs://, memory://, ...); a missing backend names its package."""
    import fsspec

    scheme = url.split("://", 1)[0].lower()
    try:
        fs = fsspec.filesystem(scheme)
    except ImportError as err:
        package = BACKEND_PACKAGES.get(scheme, "the package it names")
        raise LocationError(f"{url}: fsspec cannot read {scheme}:// here ({err}); pip install {package}") from None
    except ValueError as err:
        raise LocationError(f"{url}: {err}; use a local folder, http(s)://, an fsspec URL or pipe:") from None
    try:
        return fs.cat_file(url)
    except FileNotFoundError:
        raise LocationError(
            f"{url}: not found; upload the whole shard folder there (manifest.json, the tars and the files its "
            "sources name at the same relative paths), or fix data.shards"
        ) from None
    except OSError as err:
        raise LocationError(f"{url}: {type(err).__name__}: {err}; check the URL, the credentials and the network"
                            ) from None  # fmt: skip


def _run_pipe(template: str, name: str) -> bytes:
    """Run a `pipe:` command for file `name` and return its stdout."""
    if not _PIPE_SAFE_NAME.match(name):
        raise LocationError(f"{name!r} cannot be passed to the command {template!r} (only letters, digits and ._/-)")
    cmd = template.removeprefix("pipe:").replace(PIPE_NAME, name)
    try:
        done = subprocess.run(cmd, shell=True, capture_output=True, timeout=PIPE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise LocationError(f"`{cmd}` ran longer than {PIPE_TIMEOUT_S:.0f} s; check the command") from None
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().replace("\n", " | ")[-STDERR_TAIL:]
        raise LocationError(
            f"`{cmd}` exited with status {done.returncode} ({tail or 'no stderr'}); check the command (it must "
            "write the file to stdout)"
        )
    return done.stdout


# ---------------------------------------------------------------------------------------------------------------
# Files the manifest names (val ground truth)
# ---------------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where fetched source files are kept: `$XDG_CACHE_HOME/sshpe/sources` (default ~/.cache/sshpe/sources)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "sshpe" / "sources"


def remote_source(location: ShardLocation, entry: dict, what: str) -> Path:
    """A local copy of a file the manifest of a remote shard folder names (`entry`: {path, relative, sha256}): its
    absolute path when that file exists here with the manifest's sha256, else `{base}/{relative}` fetched once into
    `cache_dir()` (named by its sha256, written atomically) and checked against the sha256.

    Raises:
        LocationError: the file cannot be read, or its bytes differ from the manifest's sha256.
        FileNotFoundError: the entry has no relative path (a manifest written before sshpe stored one).
    """
    from sshpe.data.shard_writer import MANIFEST_NAME, sha256_file

    sha256, local = entry.get("sha256"), Path(entry["path"])
    if local.is_file() and (not sha256 or sha256_file(local) == sha256):
        return local
    if not entry.get("relative"):
        raise FileNotFoundError(
            f"{location.where(MANIFEST_NAME)}: {what} has no path relative to the shard folder and {local} is not "
            "here; re-run `sshpe shard` and upload the folder again"
        )
    name = posixpath.basename(entry["relative"]) or "source"
    cached = cache_dir() / f"{sha256}-{name}" if sha256 else None
    if cached is not None and cached.is_file():
        return cached
    data = location.read_bytes(entry["relative"])
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256:
        raise LocationError(
            f"{location.where(entry['relative'])} ({what}) does not match the manifest (sha256 differs): upload the "
            "file `sshpe shard` read, or re-run `sshpe shard`"
        )
    return atomic_write_bytes(cached or cache_dir() / f"{digest}-{name}", data)
