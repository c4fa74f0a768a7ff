"""Training: the run configuration, losses and the one training loop."""

from modrec.train.config import RunConfig, build_config, load_config
from modrec.train.loop import Run, load_run, refit, train

__all__ = ["Run", "RunConfig", "build_config", "load_config", "load_run", "refit", "train"]
