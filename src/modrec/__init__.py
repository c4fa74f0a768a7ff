"""modrec: multi-modal sequential recommendation.

The public surface is small on purpose; everything else is reachable through the
subpackages (`modrec.data`, `modrec.models`, `modrec.train`, `modrec.eval`,
`modrec.serve`) and the run-directory owner `modrec.runs`.

Importing modrec before torch makes torch's idle OpenMP threads spin only briefly before
they sleep (``GOMP_SPINCOUNT=1000`` unless the user set how OpenMP waits): see
`modrec.threads` for why.
"""

from modrec.threads import prepare_openmp

prepare_openmp()  # before anything below imports torch

# ruff: noqa: E402 - the imports below must follow prepare_openmp

from modrec.config import RunConfig, build_config
from modrec.data import Dataset, leave_one_out, load_dataset
from modrec.eval import evaluate
from modrec.models import build_model
from modrec.runs import load_run
from modrec.train import train

__all__ = [
    "Dataset",
    "RunConfig",
    "build_config",
    "build_model",
    "evaluate",
    "leave_one_out",
    "load_dataset",
    "load_run",
    "train",
]
__version__ = "0.1.0"
