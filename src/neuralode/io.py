"""Atomic file writes: a file is either the old version or the complete new one, never half.

Every file a run writes goes through these helpers: the content is written to a temporary file
in the same directory (so the rename stays on one file system), flushed and fsynced, then moved
over the target with :func:`os.replace`, which is atomic on POSIX and Windows. A run killed at
any moment therefore leaves no truncated ``config.json`` or checkpoint behind, and no stray
temporary files either (they are removed when the write fails).
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "append_jsonl",
    "read_jsonl",
    "to_jsonable",
]


@contextmanager
def _atomic_file(path: str | os.PathLike[str], mode: str) -> Iterator[IO[Any]]:
    """Yield a temporary file next to ``path``; on clean exit, rename it over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        # Also on KeyboardInterrupt: the target keeps its previous content, the temp file goes.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with _atomic_file(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    with _atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` into plain JSON types.

    Handles what experiments typically return: tensors and numpy scalars/arrays (to numbers or
    lists), tuples and sets (to lists), paths and dtypes/devices (to strings), dataclasses (to
    dicts). Non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"`` so the output
    is strict JSON that any reader accepts.
    """
    import dataclasses

    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if hasattr(obj, "tolist") and callable(obj.tolist):  # torch.Tensor, numpy array / scalar
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return to_jsonable(obj.item())
    return str(obj)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (converted with :func:`to_jsonable`) to ``path`` atomically."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)`` atomically: the old checkpoint survives a crash mid-write."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` with a single write and flush.

    Rewriting a growing log atomically on every step would cost O(steps²); an append of one
    complete line is the standard compromise. A crash can at worst leave a truncated last line,
    which :func:`read_jsonl` skips.
    """
    line = json.dumps(to_jsonable(record), allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def read_jsonl(path: str | os.PathLike[str], *, on_bad_line: Callable[[int, str], None] | None = None) -> list[dict[str, Any]]:
    """Read a JSON-lines file; lines that do not parse (a crash mid-append) are skipped."""
    records: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return records
    with open(p, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if on_bad_line is not None:
                    on_bad_line(number, line)
    return records
