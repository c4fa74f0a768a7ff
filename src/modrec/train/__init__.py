"""Training: the losses and the one training loop, in public pieces (`setup`,
`train_epoch`, `validate_and_select`, `save_checkpoint`, `finish`), and `refit`."""

from modrec.train.checkpoint import Checkpoint, Progress
from modrec.train.loop import (
    Session,
    finish,
    save_checkpoint,
    setup,
    train,
    train_epoch,
    validate_and_select,
)
from modrec.train.refit import refit

__all__ = ["Checkpoint", "Progress", "Session", "finish", "refit", "save_checkpoint", "setup",
           "train", "train_epoch", "validate_and_select"]
