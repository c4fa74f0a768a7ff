"""The resume policy: when a run folder may be trained into, and what a resume may
change.

* `check_new`: a folder that holds trained weights, finished or not, is trained into
  again only with ``resume`` (``--resume``); without it a run would start over there
  and replace its checkpoint, weights and metrics.
* `resume_history`: a resume continues the same model on the same data; only the
  training settings (`RESUMABLE_SECTIONS`) may change, and each change is recorded in
  the run's config.json.

`train.loop.setup` applies both before it writes anything into the folder.
"""

from __future__ import annotations

import logging
from typing import Any

from modrec.config import RESUMABLE_SECTIONS, RunConfig, config_changes
from modrec.data import Dataset
from modrec.errors import ConfigError, UsageError
from modrec.runs import RunDir, RunError

log = logging.getLogger(__name__)


def check_new(run: RunDir) -> None:
    """One rule for a folder training has written to, finished or not: only --resume
    trains into it again. Without it a run would start over in it and replace its
    checkpoint, weights and metrics (with any model and data)."""
    if not run.trained:
        return
    start_over = ("choose another --out, or delete the folder to start over "
                  f"(rm -r {run.folder})")
    stopped = run.unfinished()
    if stopped is None:
        raise RunError(
            f"{run.folder} already holds a finished run; training into it would replace "
            f"its weights and results. To train it further, pass --resume (with a larger "
            f"--epochs); to train another, {start_over}.")
    raise RunError(
        f"{run.folder} holds a run that has not finished (its training {stopped}); "
        "training into it without --resume would start it over and replace its "
        f"checkpoint and metrics. To continue it, run the same command plus --resume; "
        f"to train another, {start_over}.")


def resume_history(run: RunDir, config: RunConfig, dataset: Dataset,
                   epoch: int) -> list[dict[str, Any]]:
    """The run's earlier resumes plus this one (at ``epoch``, when settings changed),
    for its config.json. Only training settings may change: a resume with another
    model, loss or data would continue one model as another, so it stops here, before
    anything in the run is rewritten."""
    if not run.config_file.exists():
        return []
    extras = run.config_extras()
    history: list[dict[str, Any]] = extras.get("resumed", [])
    before = extras.get("dataset_info", {}).get("fingerprint")
    if before is not None and before != dataset.fingerprint():
        raise UsageError(
            f"{run.folder} was trained on other data than {config.data.dataset!r} holds now "
            "(its interactions or ids changed); resuming would continue on different "
            "data. Train into a new --out.")
    changes = config_changes(run.read_config(), config)
    fixed = {key: change for key, change in changes.items()
             if key.split(".")[0] not in RESUMABLE_SECTIONS}
    if fixed:
        listed = "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in fixed.items())
        raise ConfigError(
            f"{run.folder} was trained with other settings ({listed}); resuming would "
            f"continue one model as another. Resume with the settings in {run.config_file}, "
            "or train into a new --out.")
    if changes:
        log.info("resuming %s with changed training settings: %s", run.folder,
                 ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items()))
        history.append({"epoch": epoch,
                        "changed": {key: list(change) for key, change in changes.items()}})
    return history
