"""Atomic file writes, shared by every room: long jobs never leave a half-written file behind;
file hashes and format-tagged JSON files.

``with atomic_path(p) as tmp:`` yields a temporary path in ``p``'s folder (same file ending, so
writers that look at the suffix — PIL, numpy — behave) and renames it onto ``p`` only when the
block succeeds; on any error the temporary file is removed and ``p`` is untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "read_format_json", "file_sha256"]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsynced temporary file, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def read_format_json(path: str | os.PathLike, fmt: str, what: str,
                     error: type[Exception] = ValueError) -> dict:
    """Read a JSON object whose ``"format"`` field must equal ``fmt``; a file that does not parse
    or has another format raises ``error`` naming the file and ``what`` it should have been."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{p}: malformed {what} ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise error(f"{p}: not a {fmt} {what} (format {got!r})")
    return obj


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
