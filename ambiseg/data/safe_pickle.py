"""Load pickles of numpy arrays without executing anything else.

`pickle.load` calls whatever global a file names (`os.system`, `builtins.open`, ...), so a
downloaded `*.pickle` can run code. `safe_load` admits only the globals numpy needs to rebuild
arrays, dtypes and scalars, plus builtin containers; any other global is refused with a
`DataError` that names it and the file, before anything is called.

Loaded content is bounded too: containers nested deeper than `MAX_DEPTH` (a 200 KB pickle
can nest 200,000 tuples, which crashes the interpreter when anything walks it), containers
that hold themselves, and `bytearray(n)` of a size instead of bytes are refused.
"""

from __future__ import annotations

import importlib
import pickle
import pickletools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["ALLOWED_GLOBALS", "MAX_DEPTH", "SafeUnpickler", "safe_load", "check_depth", "scan_nesting"]

MAX_DEPTH = 32  # containers within containers; LIDC pickles nest 4 deep
_MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}

# (module, name) as written in the pickle -> (module to import, attribute). numpy 2 writes
# `numpy._core.*`, numpy 1 wrote `numpy.core.*`; both resolve to whichever the installed numpy has.
ALLOWED_GLOBALS: dict[tuple[str, str], tuple[str, str]] = {
    **{
        (f"numpy.{core}.multiarray", fn): ("multiarray", fn)
        for core in ("core", "_core")
        for fn in ("_reconstruct", "scalar")
    },
    **{(f"numpy.{core}.numeric", "_frombuffer"): ("numeric", "_frombuffer") for core in ("core", "_core")},
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),  # bytes inside protocol 0-2 pickles
    # protocol 0-2 pickles (and Python 2 ones) spell builtins "__builtin__"
    **{
        (module, fn): ("builtins", fn)
        for module in ("builtins", "__builtin__")
        for fn in ("set", "frozenset", "bytearray")
    },
}


def _numpy_core(submodule: str) -> Any:
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy < 2
        return importlib.import_module(f"numpy.core.{submodule}")


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler whose `find_class` admits only `ALLOWED_GLOBALS`."""

    def __init__(self, file: Any, *, source: str) -> None:
        super().__init__(file, encoding="latin1")  # latin1 lets numpy read Python 2 pickles
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise DataError(
                f"{self.source}: pickle asks for the global '{module}.{name}', which is refused (only numpy "
                "arrays and builtin containers are loaded, since any other global can run code); "
                "re-save the data as plain dicts/lists of numpy arrays, or use the LIDC slices layout"
            )
        where, attr = target
        if (where, attr) == ("builtins", "bytearray"):
            return self._bytearray
        module_obj = _numpy_core(where) if where in ("multiarray", "numeric") else importlib.import_module(where)
        return getattr(module_obj, attr)

    def _bytearray(self, *args: Any) -> bytearray:
        """`bytearray` of bytes (as pickles write it), never of a size: `bytearray(2**62)` is refused."""
        if args and not isinstance(args[0], (bytes, bytearray, str)):
            raise DataError(
                f"{self.source}: pickle builds a bytearray from a {type(args[0]).__name__}, which is "
                "refused (only bytes are loaded); re-export the file"
            )
        return bytearray(*args)

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: pickle uses persistent ids ({pid!r}), which are refused")


def _children(obj: Any) -> Iterable[Any]:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return obj
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        return obj.flat
    return ()


def check_depth(obj: Any, *, source: str, limit: int = MAX_DEPTH) -> None:
    """Refuse `obj` when containers nest more than `limit` deep or one contains itself.

    Walks without recursion (and each shared object once), so the check itself cannot crash.
    """
    height: dict[int, int] = {}  # id -> nesting depth below it, for finished containers
    path: list[tuple[Any, Any]] = [(obj, iter(_children(obj)))]
    on_path = {id(obj)}
    while path:
        node, children = path[-1]
        child = next(children, _DONE)
        if child is _DONE:
            path.pop()
            on_path.discard(id(node))
            height[id(node)] = 1 + max((height.get(id(c), 0) for c in _children(node)), default=0)
            continue
        if not _children(child) and not isinstance(child, (dict, list, tuple, set, frozenset)):
            continue
        if id(child) in on_path:
            raise DataError(
                f"{source}: pickle holds a container that contains itself, which is refused; "
                "re-export the file as plain dicts/lists of numpy arrays"
            )
        if len(path) + height.get(id(child), 0) > limit:
            raise DataError(
                f"{source}: pickle nests containers more than {limit} deep, which is refused; "
                "re-export the file as plain dicts/lists of numpy arrays"
            )
        if id(child) not in height:
            path.append((child, iter(_children(child))))
            on_path.add(id(child))


_DONE = object()


def scan_nesting(handle: Any, *, source: str, limit: int = 2 * MAX_DEPTH) -> None:
    """Refuse a pickle whose opcodes would build objects nested more than `limit` deep.

    Runs before unpickling, because unpickling itself can crash: a dict key that is a tuple
    nested 200,000 deep overflows the C stack when it is hashed. Each stack entry carries the
    depth of the object it stands for (shared with the memo, so later appends count); a built
    object is one deeper than its deepest part. Opcodes are read, nothing is built.
    """
    stack: list[list[int]] = []
    marks: list[int] = []
    memo: dict[Any, list[int]] = {}
    try:
        for op, arg, _ in pickletools.genops(handle):
            before, after = op.stack_before, op.stack_after
            if op.name in ("MARK", "PROTO", "FRAME", "STOP"):
                if op.name == "MARK":
                    marks.append(len(stack))
                continue
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if op.name == "MEMOIZE" else arg] = stack[-1]
                continue
            if op.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
                continue
            if op.name == "DUP":
                stack.append(stack[-1])
                continue
            popped: list[list[int]] = []
            if pickletools.markobject in before:
                start = marks.pop()
                popped, stack[start:] = stack[start:], []
                fixed = before.index(pickletools.markobject)
            else:
                fixed = len(before)
            if op.name == "POP" and marks and marks[-1] == len(stack):
                marks.pop()  # POP of a mark
                continue
            for _ in range(fixed):
                popped.insert(0, stack.pop())
            inner = max((cell[0] for cell in popped), default=-1) + 1
            if op.name in _MUTATORS:  # the target stays (and its memo entry sees the change)
                target = popped[0]
                target[0] = max(target[0], max((c[0] for c in popped[1:]), default=-1) + 1)
                stack.append(target)
                depth = target[0]
            else:
                depth = inner if popped else 0
                stack += [[depth] for _ in after]
            if depth > limit:
                raise DataError(
                    f"{source}: pickle nests objects more than {limit} deep, which is refused; "
                    "re-export the file as plain dicts/lists of numpy arrays"
                )
    except (IndexError, KeyError):
        raise DataError(
            f"{source}: not a readable pickle (its opcodes use a stack entry or memo slot that does "
            "not exist); re-export the file"
        ) from None
    except ValueError as exc:  # pickletools: unknown opcode, truncated argument
        raise DataError(f"{source}: not a readable pickle ({exc}); re-export the file") from None


def safe_load(path: str | Path) -> Any:
    """Unpickle `path` with `SafeUnpickler` and `check_depth`; unreadable or unsafe files raise `DataError`."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            scan_nesting(handle, source=str(path))
            handle.seek(0)
            content = SafeUnpickler(handle, source=str(path)).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: pickle file not found") from None
    except (MemoryError, OverflowError, RecursionError) as exc:
        raise DataError(
            f"{path}: pickle asks for more than can be loaded ({type(exc).__name__}); re-export the file"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); re-export the file") from None
    check_depth(content, source=str(path))
    return content
