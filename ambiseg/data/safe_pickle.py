"""Load pickles of numpy arrays without executing anything else.

`pickle.load` calls whatever global a file names (`os.system`, `builtins.open`, ...), so a
downloaded `*.pickle` can run code. `safe_load` admits only the globals numpy needs to rebuild
arrays, dtypes and scalars, plus builtin containers; any other global is refused with a
`DataError` that names it and the file, before anything is called.
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = ["ALLOWED_GLOBALS", "SafeUnpickler", "safe_load"]

# (module, name) as written in the pickle -> (module to import, attribute). numpy 2 writes
# `numpy._core.*`, numpy 1 wrote `numpy.core.*`; both resolve to whichever the installed numpy has.
ALLOWED_GLOBALS: dict[tuple[str, str], tuple[str, str]] = {
    **{(f"numpy.{core}.multiarray", fn): ("multiarray", fn)
       for core in ("core", "_core") for fn in ("_reconstruct", "scalar")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): ("numeric", "_frombuffer") for core in ("core", "_core")},
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),  # bytes inside protocol 0-2 pickles
    # protocol 0-2 pickles (and Python 2 ones) spell builtins "__builtin__"
    **{(module, fn): ("builtins", fn)
       for module in ("builtins", "__builtin__") for fn in ("set", "frozenset", "bytearray")},
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
        module_obj = _numpy_core(where) if where in ("multiarray", "numeric") else importlib.import_module(where)
        return getattr(module_obj, attr)

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: pickle uses persistent ids ({pid!r}), which are refused")


def safe_load(path: str | Path) -> Any:
    """Unpickle `path` with `SafeUnpickler`; unreadable or unsafe files raise `DataError`."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return SafeUnpickler(handle, source=str(path)).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: pickle file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); re-export the file") from None
