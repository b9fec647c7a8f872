"""Atomic file writes: a crash mid-write never leaves a truncated file where a good one was."""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import errno
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import AmbisegError

__all__ = [
    "atomic_path",
    "atomic_paths",
    "write_text",
    "json_text",
    "write_json",
    "ensure_dir",
    "check_dir",
    "no_new_dirs_on_error",
    "check_target",
    "is_temp_file",
    "write_error",
    "reading",
    "file_kind",
    "suffix_kind",
]

# `atomic_path` names its temporary `.<name>.<random>.tmp<suffix>`; a killed writer leaves one behind
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]+)?$")


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether `path` is named like a temporary of `atomic_path` (readers skip these)."""
    return bool(_TEMP_NAME.match(Path(path).name))


def check_target(path: str | os.PathLike, *, kind: str | None = None, option: str = "--out") -> Path:
    """`path` if an output may be written there; else an error saying why and to choose another `option`.

    Refused: a directory, device node, FIFO or socket; a file that is an input of the running
    command (`reading`), through any link; and, when the `kind` of what is written is known, an
    existing file of another kind (`file_kind`): a checkpoint is only replaced by a checkpoint.
    A new path, an empty file, or a file of the same kind passes.
    """
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except NotADirectoryError:
        raise AmbisegError(f"cannot write {path}: a file is in the way of its folder") from None
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise AmbisegError(f"refusing to write {path}: it is {what}; outputs must be new paths or regular files")
    if _identity(path) in _INPUTS.get():
        via = " (through a link)" if stat.S_ISLNK(mode) else ""
        raise AmbisegError(f"refusing to write {path}: it is an input of this command{via}; choose another {option}")
    if kind is not None:
        _check_kind(path, kind, option)
    return path


# ---- the inputs of the running command: never replaced by one of its outputs ----------------
_INPUTS: contextvars.ContextVar[frozenset[tuple[int, int]]] = contextvars.ContextVar(
    "ambiseg_inputs", default=frozenset()
)


@contextlib.contextmanager
def reading(*paths: str | os.PathLike | None) -> Iterator[None]:
    """Within, no output replaces a file among `paths` (the inputs of a command), whatever the
    name or link it is reached by; directories and missing paths are ignored."""
    ids = {i for i in (_identity(p) for p in paths if p is not None) if i is not None}
    token = _INPUTS.set(_INPUTS.get() | ids)
    try:
        yield
    finally:
        _INPUTS.reset(token)


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of the regular file `path` leads to, following links; None for anything else."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


# ---- kinds of file: an output replaces only a file of its own kind ----------------------------
_SUFFIX_KINDS = {
    **dict.fromkeys((".json",), "json"),
    **dict.fromkeys((".csv", ".md", ".tex", ".txt", ".log", ".pgf"), "text"),
    **dict.fromkeys((".npz", ".zip"), "zip"),
    **dict.fromkeys((".jpg", ".jpeg"), "jpeg"),
    **dict.fromkeys((".tif", ".tiff"), "tiff"),
    **dict.fromkeys((".eps", ".ps"), "postscript"),
    **dict.fromkeys((".pickle", ".pkl"), "pickle"),
    **{f".{k}": k for k in ("safetensors", "png", "pdf", "svg", "webp")},
    ".svgz": "gzip",
    ".gz": "gzip",
}
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"%PDF-", "pdf"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
    (b"\x1f\x8b", "gzip"),
    (b"%!PS", "postscript"),
)
_JSON_KIND = re.compile(r'\{\s*"kind"\s*:\s*"([\w.-]{1,64})"')  # ambiseg's JSON files name their kind first
_KIND_NAMES = {"safetensors": "a checkpoint (safetensors)", "json": "JSON", "text": "text", "binary": "binary data"}


def suffix_kind(path: str | os.PathLike) -> str | None:
    """The kind of file the name's suffix promises (`.json`: json, `.csv`: text, ...), or None."""
    return _SUFFIX_KINDS.get(Path(path).suffix.lower())


def file_kind(path: str | os.PathLike) -> str | None:
    """What `path` holds by its first bytes: safetensors, json, text, png, pdf, svg, zip, ...,
    `binary` when unknown, `empty`, or None when it cannot be read or is not a regular file (a
    FIFO would block the read)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as fh:
            head, size = fh.read(4096), os.fstat(fh.fileno()).st_size
    except OSError:
        return None
    if not head:
        return "empty"
    if len(head) > 8 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return _text_kind(head)


def _text_kind(head: bytes) -> str:
    """json, svg or text for UTF-8 text without NUL bytes; binary otherwise."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return "binary"
    if "\x00" in text:
        return "binary"
    start = text.lstrip("\ufeff \t\r\n")
    tagged = _JSON_KIND.match(start)
    if tagged:  # a bench record or reference rows: never replaced by other JSON
        return f"json ({tagged.group(1)})"
    if start[:1] in ("{", "["):
        return "json"
    if start.startswith("<") and "<svg" in text:
        return "svg"
    return "text"


def _check_kind(path: Path, kind: str, option: str) -> None:
    """Refuse to write `kind` over `path` when it holds (or is named for) another kind; a checkpoint
    or a bench record is replaced only by its own kind, whatever its name."""
    if not os.path.exists(path):  # new, or a dangling link (the write replaces the link)
        return
    held, named = file_kind(path), suffix_kind(path)
    if held == "empty":
        return
    protected = held if held == "safetensors" or str(held).startswith("json (") else None
    protected = protected or ("safetensors" if named == "safetensors" else None)
    if protected == "safetensors" and kind != protected:
        raise AmbisegError(
            f"refusing to write {_describe(kind)} over {path}: it is a checkpoint (safetensors), which "
            f"only training replaces; choose another {option}"
        )
    if (protected and kind != protected) or (not protected and kind not in (held, named) and (held or named)):
        raise AmbisegError(
            f"refusing to write {_describe(kind)} over {path}: it holds {_describe(held or str(named))}; "
            f"choose another {option}"
        )


def _describe(kind: str) -> str:
    if kind.startswith("json ("):
        return "JSON " + kind[5:]
    return _KIND_NAMES.get(kind, kind.upper() if len(kind) <= 4 else kind)


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


def check_dir(path: str | os.PathLike) -> Path:
    """`path` if it is a directory or `ensure_dir` can make it one (no file in the way); creates nothing."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        if os.path.lexists(folder):
            raise AmbisegError(f"output directory {path} cannot be created: {folder} is a file in the way")
    return path


@contextlib.contextmanager
def no_new_dirs_on_error(path: str | os.PathLike) -> Iterator[Path]:
    """Yield `path`; when the block raises, remove the directories on the way to `path` that did
    not exist before it and are still empty, so a refused command leaves no empty --out behind.
    A directory holding anything (a checkpoint of a run that failed later) is kept."""
    path = Path(path)
    new = []  # deepest first
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            break
        new.append(folder)
    try:
        yield path
    except BaseException:
        for folder in new:
            try:
                folder.rmdir()
            except FileNotFoundError:  # never made: the next one up may have been
                continue
            except OSError:  # not empty (or not ours to remove): keep it and what holds it
                break
        raise


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
def atomic_paths(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Like `atomic_path` for a set of files: every temporary is written and synced before the
    first rename, so a failure (e.g. a full disk) leaves all of `paths` as they were."""
    targets = [check_target(p) for p in paths]
    with contextlib.ExitStack() as made:  # a failure leaves no new empty folder either
        for parent in dict.fromkeys(p.parent for p in targets):
            made.enter_context(no_new_dirs_on_error(parent))
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
                check_target(path, kind=_written_kind(tmp))  # the work may have taken long: check again
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


def _written_kind(tmp: Path) -> str:
    """The kind of what a writer put in `tmp` (nothing counts as text)."""
    kind = file_kind(tmp)
    return "text" if kind in (None, "empty") else kind


def _remove(temps: list[Path]) -> None:
    for tmp in temps:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically, as UTF-8 whatever the locale."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically; a float NaN (a metric undefined on an
    image) is written as `null`, since JSON has no NaN (`ambiseg.results.read_records` reads it back
    as NaN)."""
    write_text(path, json_text(obj))


def json_text(obj: Any) -> str:
    """`obj` as the indented JSON `write_json` writes (NaN as null)."""
    return json.dumps(_null_for_nan(obj), indent=2, sort_keys=False, default=_json_default) + "\n"


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
