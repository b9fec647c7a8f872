"""Atomic file writes: a crash mid-write never leaves a truncated file where a good one was."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import AmbisegError

__all__ = [
    "atomic_path",
    "atomic_paths",
    "write_text",
    "write_json",
    "ensure_dir",
    "check_target",
    "is_temp_file",
    "write_error",
]

# `atomic_path` names its temporary `.<name>.<random>.tmp<suffix>`; a killed writer leaves one behind
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]+)?$")


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether `path` is named like a temporary of `atomic_path` (readers skip these)."""
    return bool(_TEMP_NAME.match(Path(path).name))


def check_target(path: str | os.PathLike) -> Path:
    """`path` if it is new or a regular file (or a link, which a write replaces); else an error.

    An output never replaces a directory, device node, FIFO or socket.
    """
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except NotADirectoryError:
        raise AmbisegError(f"cannot write {path}: a file is in the way of its folder") from None
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise AmbisegError(f"refusing to write {path}: it is {kind}; outputs must be new paths or regular files")
    return path


def write_error(path: str | os.PathLike, exc: BaseException) -> AmbisegError:
    """A one-line error for a failed write of `path` (full disk, read-only file system, ...)."""
    code: int = getattr(exc, "errno", None) or 0
    reason = os.strerror(code) if code else str(exc)
    hint = {
        errno.ENOSPC: "free some space",
        errno.EROFS: "choose a writable --out",
        errno.EDQUOT: "free some space",
        errno.EACCES: "choose a writable --out",
    }.get(code, "")
    return AmbisegError(f"cannot write {path}: {reason}; the previous file is kept" + (f"; {hint}" if hint else ""))


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents); a clear error when it cannot be created or written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise AmbisegError(f"output directory {path} cannot be created: a file of that name is in the way") from None
    except PermissionError:
        raise AmbisegError(
            f"output directory {path} cannot be created: permission denied; choose another --out"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise AmbisegError(f"output directory {path} is not writable; choose another --out")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    On any error the temporary file is removed and `path` keeps its previous content; an
    `OSError` of the file system (full disk, read-only) becomes one `AmbisegError` line. A
    `path` that exists but is not a regular file is refused before anything is written.
    """
    with atomic_paths([path]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(paths: list[str | os.PathLike]) -> Iterator[list[Path]]:
    """Like `atomic_path` for a set of files: every temporary is written and synced before the
    first rename, so a failure (e.g. a full disk) leaves all of `paths` as they were."""
    targets = [check_target(p) for p in paths]
    for parent in dict.fromkeys(p.parent for p in targets):
        ensure_dir(parent)
    temps: list[Path] = []
    current = targets[0]
    try:
        for path in targets:
            current = path
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
            os.close(fd)
            temps.append(Path(name))
        yield list(temps)
        for path, tmp in zip(targets, temps, strict=True):
            current = path
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 (writers may recreate it): usual permissions
        for path, tmp in zip(targets, temps, strict=True):
            current = path
            os.replace(tmp, path)
    except OSError as exc:
        _remove(temps)
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
            raise
        raise write_error(current, exc) from None
    except BaseException:
        _remove(temps)
        raise


def _remove(temps: list[Path]) -> None:
    for tmp in temps:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically; a float NaN (a metric undefined on an
    image) is written as `null`, since JSON has no NaN (`ambiseg.results.read_records` reads it back
    as NaN)."""
    write_text(path, json.dumps(_null_for_nan(obj), indent=2, sort_keys=False, default=_json_default) + "\n")


def _null_for_nan(obj: Any) -> Any:
    """`obj` with every float NaN inside dicts, lists and tuples replaced by None."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _null_for_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_null_for_nan(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return _null_for_nan(obj.tolist())
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
