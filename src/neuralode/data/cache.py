"""Download → verify → cache, shared by every loader of real data.

Where files live
----------------
``data_root()``
    Where a user (or CI) placed *source* files: ``$NEURALODE_DATA`` when set, else the
    per-user cache. It may be read-only; nothing here ever writes into it unless it *is*
    the per-user cache.
``cache_dir()``
    Writable per-user cache: ``$NEURALODE_CACHE``, else ``$XDG_CACHE_HOME/neuralode``,
    else ``~/.cache/neuralode``. Downloads and decoded arrays go here.

A data set keeps its files in one sub-folder (``"mnist"``, ``"cifar10_jpg"``, ...) of
either place.

How to use it (a loader)::

    from neuralode.data.cache import Resource, fetch

    TRAIN = Resource(
        "train-labels-idx1-ubyte.gz",
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz",),
        md5="a25bea736e30d166cdddb491f175f624",
        checksum_of="gunzipped",          # checksum of the *uncompressed* content
    )
    path = fetch(TRAIN, "mnist")          # -> Path of a verified file

``fetch`` looks for ``<data_root()>/<subdir>/<filename>`` and then
``<cache_dir()>/<subdir>/<filename>``; the first one whose checksum verifies is
returned. A file that exists but fails verification (corrupt, truncated, a partial
download) is reported by name (a :class:`UserWarning` naming the file and both
checksums) and fetched again into the writable cache. Downloads go to a temporary
name in the target folder, are verified, and only then renamed into place, so a
killed download never leaves a file that looks complete. When no URL can be reached
(no network), :class:`DataUnavailableError` names every missing file and the folder
to place it in. A download whose content fails verification raises
:class:`ChecksumError`.

``fetch_all(resources, subdir)`` does the same for several files and reports *all*
missing ones in one error.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "ChecksumError",
    "DataUnavailableError",
    "Resource",
    "cache_dir",
    "checksum",
    "data_root",
    "fetch",
    "fetch_all",
    "tar_members_digest",
    "verify",
]

_CHUNK = 1 << 20


class DataUnavailableError(FileNotFoundError):
    """Files are neither present nor downloadable; the message says where to put them."""


class ChecksumError(ValueError):
    """A file's content does not match its published checksum."""


@dataclass(frozen=True)
class Resource:
    """One file of a data set.

    Args:
        filename: name of the file on disk (and the last part of its URLs).
        urls: mirrors, tried in order. ``file://`` URLs work too (used by the tests).
        md5 / sha256: expected hex digest (give at least one; both are checked if given).
        checksum_of: ``"file"`` — digest of the bytes on disk; ``"gunzipped"`` — digest
            of the gzip-decompressed content (use it when the published checksum is of
            the uncompressed file, so that a re-compressed copy still verifies);
            ``"tar-members"`` — digest of a tar archive's regular files by content
            (:func:`tar_members_digest`), so that the official archive and a repacked copy
            of the same files (other order, folders, mtimes, compression) verify alike.
    """

    filename: str
    urls: Sequence[str] = ()
    md5: str | None = None
    sha256: str | None = None
    checksum_of: Literal["file", "gunzipped", "tar-members"] = "file"

    def __post_init__(self) -> None:
        if self.md5 is None and self.sha256 is None:
            raise ValueError(f"Resource {self.filename!r}: give md5= or sha256= (got neither)")
        if self.checksum_of not in ("file", "gunzipped", "tar-members"):
            raise ValueError(
                f"Resource {self.filename!r}: checksum_of={self.checksum_of!r}; "
                "expected 'file', 'gunzipped' or 'tar-members'"
            )


def cache_dir() -> Path:
    """The writable per-user cache folder (created if needed)."""
    env = os.environ.get("NEURALODE_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "neuralode"
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root() -> Path:
    """Where source data files are looked for first: ``$NEURALODE_DATA``, else :func:`cache_dir`."""
    env = os.environ.get("NEURALODE_DATA")
    return Path(env).expanduser() if env else cache_dir()


def _open(path: Path, checksum_of: str):
    return gzip.open(path, "rb") if checksum_of == "gunzipped" else open(path, "rb")


def tar_members_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a tar archive's content: its regular files sorted by base name, each fed as
    ``name, NUL, size, NUL, bytes``. Folders, member order, metadata and compression (any that
    :mod:`tarfile` reads) do not enter it; two files with one base name are an error (the digest
    would depend on which one wins). Raises ``tarfile.TarError``/``OSError`` on a bad archive.
    """
    h = hashlib.new(algorithm)
    digests: dict[str, tuple[int, bytes]] = {}
    with tarfile.open(Path(path), "r:*") as tar:
        for member in tar:  # archive order: no backward seeks in a compressed stream
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            if name in digests:
                raise tarfile.TarError(f"two members named {name!r}")
            fh = tar.extractfile(member)
            inner = hashlib.new(algorithm)
            if fh is not None:
                while chunk := fh.read(_CHUNK):
                    inner.update(chunk)
            digests[name] = (member.size, inner.digest())
    for name in sorted(digests):
        size, digest = digests[name]
        h.update(name.encode() + b"\0" + str(size).encode() + b"\0" + digest)
    return h.hexdigest()


def checksum(path: str | Path, algorithm: str = "md5", checksum_of: str = "file") -> str:
    """Hex digest of a file (or of its gunzipped content, or of a tar archive's members: see
    :class:`Resource`). Raises OSError/EOFError on a bad gzip, ``tarfile.TarError`` on a bad tar."""
    if checksum_of == "tar-members":
        return tar_members_digest(path, algorithm)
    h = hashlib.new(algorithm)
    with _open(Path(path), checksum_of) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | Path, resource: Resource) -> str | None:
    """Check ``path`` against ``resource``; return ``None`` if it verifies, else the reason."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    for algo in ("md5", "sha256"):
        expected = getattr(resource, algo)
        if expected is None:
            continue
        try:
            got = checksum(path, algo, resource.checksum_of)
        except (OSError, EOFError, gzip.BadGzipFile, tarfile.TarError) as exc:  # truncated / not gzip or tar
            return f"unreadable ({type(exc).__name__}: {exc})"
        if got != expected.lower():
            what = {"gunzipped": "gunzipped content", "tar-members": "archive members"}.get(
                resource.checksum_of, "file")
            return f"{algo} of {what} is {got}, expected {expected}"
    return None


def _download(resource: Resource, target: Path) -> None:
    """Download to a temporary name in ``target``'s folder, verify, rename. Raises on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in resource.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{resource.filename}.", suffix=".part",
                                        dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
                shutil.copyfileobj(resp, out, _CHUNK)
            reason = verify(tmp, resource)
            if reason is not None:
                raise ChecksumError(
                    f"downloaded {resource.filename} from {url} does not verify: {reason}"
                )
            os.replace(tmp, target)
            return
        except ChecksumError:
            tmp.unlink(missing_ok=True)
            raise
        except (urllib.error.URLError, OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            errors.append(f"{url}: {exc}")
    raise ConnectionError("; ".join(errors) if errors else "no URL known")


def _offline_message(missing: Iterable[tuple[Resource, str]], subdir: str) -> str:
    lines = []
    for res, reason in missing:
        urls = ", ".join(res.urls) if res.urls else "no URL known"
        lines.append(f"  - {res.filename} ({reason}; tried: {urls})")
    places = [data_root() / subdir]
    if cache_dir() / subdir not in places:
        places.append(cache_dir() / subdir)
    where = " or ".join(str(p) for p in places)
    return (
        f"Data set '{subdir}' is not available and could not be downloaded:\n"
        + "\n".join(lines)
        + f"\nPlace these files in {where} (set NEURALODE_DATA to the folder that "
        f"contains '{subdir}/'), then run again."
    )


def _try_fetch(resource: Resource, subdir: str, download: bool) -> tuple[Path | None, str]:
    candidates = [data_root() / subdir / resource.filename]
    cached = cache_dir() / subdir / resource.filename
    if cached not in candidates:
        candidates.append(cached)
    reason = "missing"
    for path in candidates:
        if not path.exists():
            continue
        bad = verify(path, resource)
        if bad is None:
            return path, ""
        reason = f"{path} is corrupt or partial: {bad}"
        warnings.warn(f"{resource.filename}: {reason}; fetching it again", stacklevel=3)
    if not download:
        return None, reason
    try:
        _download(resource, cached)
    except ConnectionError as exc:
        return None, f"{reason}; download failed: {exc}"
    return cached, ""


def fetch(resource: Resource, subdir: str, *, download: bool = True) -> Path:
    """Return the path of a verified copy of ``resource`` (see the module docstring)."""
    return fetch_all([resource], subdir, download=download)[0]


def fetch_all(resources: Sequence[Resource], subdir: str, *, download: bool = True) -> list[Path]:
    """Fetch several files of one data set; one error lists every file that is unavailable."""
    paths: list[Path] = []
    missing: list[tuple[Resource, str]] = []
    for res in resources:
        path, reason = _try_fetch(res, subdir, download)
        if path is None:
            missing.append((res, reason))
        else:
            paths.append(path)
    if missing:
        raise DataUnavailableError(_offline_message(missing, subdir))
    return paths
