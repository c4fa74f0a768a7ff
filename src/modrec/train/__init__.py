"""Training: the losses and the one training loop, in public pieces (`setup`,
`train_epoch`, `validate_and_select`, `save_checkpoint`, `finish`)."""

from modrec.train.checkpoint import Checkpoint, Progress
from modrec.train.loop import (
    Session,
    finish,
    refit,
    save_checkpoint,
    setup,
    train,
    train_epoch,
    validate_and_select,
)

__all__ = ["Checkpoint", "Progress", "Session", "finish", "refit", "save_checkpoint", "setup",
           "train", "train_epoch", "validate_and_select"]
