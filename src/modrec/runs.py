"""The run directory's owner: everything that reads or writes a run folder goes
through here.

Weights and checkpoints are loaded with ``weights_only=True`` only: a ``.pt`` file is a
pickle, and a crafted pickle runs code when it is unpickled with the full unpickler.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


class RunError(ValueError):
    """A run directory (or a file in it) is missing, incomplete or not what modrec
    wrote. The message names the path and what to do."""


def load_tensors(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """A ``.pt`` file of tensors, plain containers and numbers, never code."""
    if not path.exists():
        raise RunError(f"{path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(
            f"{path} is not a weights file modrec can load safely ({first}). modrec loads "
            "only tensors and plain values, never objects that could run code; if this "
            "file came from elsewhere, do not trust it. Retrain, or restore the file "
            "from the run that wrote it.") from None
