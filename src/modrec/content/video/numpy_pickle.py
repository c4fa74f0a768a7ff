"""Reading weights that were published as a pickle of plain numpy arrays, without ever
running code from the file.

A pickle names the functions the unpickler calls to rebuild its objects, so a crafted
file runs whatever it names (``os.system``...) under ``pickle.load``. `load_numpy_pickle`
unpickles with `NumpyUnpickler`, which resolves only the names numpy's own arrays are
rebuilt from and refuses every other one before anything is called. What it can then
build is dicts, lists, tuples, strings, numbers and numpy arrays; callers check the
arrays' dtypes and shapes themselves (`modrec.content.video.i3d` does, against its
network). Pickle protocols 3 and later only: before 3, bytes (an array's data) are
rebuilt by calling ``_codecs.encode``, which is not admitted.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from modrec.errors import ModrecError


class WeightsError(ModrecError, ValueError):
    """A weights file is missing, damaged, unsafe to load, or not the weights the model
    expects. The message names the file and what to do."""


def _allowed() -> dict[tuple[str, str], Any]:
    """The globals numpy's array pickles refer to, each under the module names numpy 1
    (``numpy.core``) and numpy 2 (``numpy._core``) write, mapped to the objects this numpy
    has (taken from its own reductions, so no deprecated module is imported)."""
    reconstruct = np.zeros(1).__reduce__()[0]  # protocols 0-4: _reconstruct + __setstate__
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5: _frombuffer(buffer, ...)
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside numpy's array reconstruction."""


class NumpyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers, and nothing else:
    any other global the stream names (a class, a function) is refused before it is
    looked up, so nothing in the file is ever called except numpy's array constructors.
    Persistent ids are refused by `pickle.Unpickler` itself (no ``persistent_load``)."""

    ALLOWED = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"it refers to {module}.{name}") from None


def load_numpy_pickle(path: Path) -> Any:
    """The object pickled in ``path``, built only of plain containers, numbers, strings
    and numpy arrays; a `WeightsError` naming the file for anything else, a damaged
    file, or a missing one."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with path.open("rb") as f:
            return NumpyUnpickler(f).load()
    except UnsafePickleError as err:
        raise WeightsError(
            f"{path} is not a weights file modrec can load safely: {err}, and modrec reads "
            "only numpy arrays and plain values from a pickle, never objects that could "
            "run code. If this file came from elsewhere, do not trust it; reinstall the "
            "package that ships it.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as err:
        reason = str(err) or type(err).__name__
        raise WeightsError(f"{path} is not a readable pickle of numpy arrays ({reason}): "
                           "it is damaged or not a weights file; reinstall the package "
                           "that ships it.") from None
