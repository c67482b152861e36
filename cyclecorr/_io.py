"""Atomic file writes, shared by every room: long jobs never leave a half-written file behind;
file hashes and format-tagged JSON files.

``with atomic_path(p) as tmp:`` yields a temporary path in ``p``'s folder (same file ending, so
writers that look at the suffix — PIL, numpy — behave) and renames it onto ``p`` only when the
block succeeds; on any error the temporary file is removed and ``p`` is untouched. A process killed
inside the block leaves its temporary file (``.<name>.<pid>.<random>.tmp<suffix>``);
:func:`remove_stale_temporaries` clears those of processes no longer running.

``with folder_lock(folder):`` holds an exclusive lock (``flock`` on ``folder/.lock``) so that
processes writing into one folder take turns for a critical section.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "read_format_json", "file_sha256", "folder_lock",
           "remove_stale_temporaries", "pid_alive"]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + path.suffix,
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


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


_TEMP = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]+\.tmp.*$")


def remove_stale_temporaries(folder: str | os.PathLike, min_age: float = 0.0) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` left in ``folder`` (not recursive)
    when its process was killed: those whose process id, part of the name, no longer runs on
    this machine, and (``min_age`` > 0, for folders that processes on other machines also write)
    that were last modified at least ``min_age`` seconds ago. Returns the removed paths."""
    import time

    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if not (m and p.is_file()) or pid_alive(int(m.group(1))):
            continue
        try:
            old = now - p.stat().st_mtime >= min_age
        except FileNotFoundError:
            continue
        if old:
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:  # another process cleared it first
                pass
    return removed


@contextmanager
def folder_lock(folder: str | os.PathLike):
    """An exclusive lock on ``folder`` (created) shared by every process that asks for it:
    ``flock`` on ``folder/.lock``, released when the block ends or the process dies. Where
    ``fcntl`` does not exist (Windows) the block runs unlocked."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(folder / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


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
