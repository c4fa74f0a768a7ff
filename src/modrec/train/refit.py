"""``refit(run_dir, out_dir)``: retrain a finished run with the validation items added
to training, for the epoch count its validation chose (the training loop itself,
`train.loop.train`, with the run's own settings)."""

from __future__ import annotations

from pathlib import Path

from modrec.config import config_from_dict
from modrec.errors import UsageError
from modrec.runs import RunDir
from modrec.train.loop import SELECT_ON, train


def refit(run_dir: str | Path, out_dir: str | Path, resume: bool = False,
          progress: bool = True) -> Path:
    """Retrain a finished leave-one-out run from scratch with each user's validation
    item added to training, for the number of epochs its validation chose, and score
    the last epoch on test.

    The model then learns from the same items as the HSTU repository's trainer (which
    has no validation split), while the epoch count is still chosen on validation
    rather than on test. Settings are the run's own (its config.json)."""
    source = RunDir(run_dir)
    if not source.finished:
        raise FileNotFoundError(
            f"{source.folder} has no results.json: refit needs a finished run. Train it to "
            f"the end first (modrec train ... --out {source.folder} --resume).")
    config = source.read_config()
    if config.data.split != "loo":
        raise UsageError(
            f"{source.folder} used the {config.data.split!r} split; refit adds the "
            "leave-one-out validation item to training, so it needs a run trained with "
            "--split loo")
    best = int(source.results()["best_epoch"])
    raw = config.to_dict()
    raw["data"]["split"] = "loo-no-valid"
    # A decaying learning rate keeps the source run's horizon, so that the refit sees
    # the rates the chosen epochs saw rather than a schedule squeezed into fewer epochs.
    raw["train"]["lr_decay_epochs"] = config.train.lr_horizon
    raw["train"]["epochs"] = max(best, 1)  # a fitted model (popularity) chose epoch 0
    out = RunDir(train(config_from_dict(raw), out_dir, resume=resume, progress=progress))
    results = out.results()
    results["selected_on"] = (f"epochs: best validation {SELECT_ON} of {source.folder} (epoch "
                              f"{best}); refit on training plus validation items")
    results["refit_of"] = str(source.folder)
    out.write_results(results)
    return out.folder
