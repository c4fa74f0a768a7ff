"""Training, evaluation and run folders under misuse (issue 40): a run folder is never
trained into again without --resume; a run that diverges stops with its last good
checkpoint, and NaN scores are never ranked; data too small for the split is refused
before training; an unfinished run says so when it is exported, evaluated or used."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from modrec.cli import main
from modrec.runs import RunDir, RunError, load_run
from modrec.serve.recommender import Recommender

SMALL = ["--set", "model.max_len=20", "--set", "model.num_blocks=1", "--no-progress"]


def _train(dataset: str, out: Path, *more: str) -> list[str]:
    return ["train", "-d", dataset, "-m", "sasrec", "--out", str(out), *SMALL, *more]


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    """``modrec ARGV`` exits with 2 and one message containing every ``expected``."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    for text in expected:
        assert text in err, (text, err)
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch SASRec run on ml-100k."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(_train("ml-100k", out, "--epochs", "2")) == 0
    return out


@pytest.fixture
def unfinished(finished: Path, tmp_path: Path) -> Path:
    """What a run killed after its second epoch leaves: checkpoint, best weights and
    metrics of two epochs, no results.json."""
    folder = tmp_path / "unfinished"
    shutil.copytree(finished, folder)
    (folder / "results.json").unlink()
    return folder


@pytest.fixture(scope="module")
def small_csv(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 50 users of ml-100k as a csv (one training batch per epoch)."""
    ratings = pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t",
                          names=["user", "item", "rating", "timestamp"])
    path = tmp_path_factory.mktemp("csv") / "small.csv"
    ratings[ratings["user"] <= 50].to_csv(path, index=False)
    return path


def _state(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes()
            for name in ("checkpoint.pt", "model.pt", "metrics.jsonl", "config.json")}


# ---- 3: a run folder is trained into again only with --resume --------------------------
def test_an_interrupted_run_is_not_started_over_without_resume(
        unfinished: Path, finished: Path, small_csv: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    before = _state(unfinished)
    for argv in (_train("ml-100k", unfinished, "--epochs", "1"),
                 # another model and dataset: it would replace the run with another
                 ["train", "-d", str(small_csv), "-m", "gru4rec", "--out", str(unfinished),
                  "--no-progress", "--epochs", "1"],
                 ["refit", str(finished), "--out", str(unfinished), "--no-progress"]):
        _fails(argv, capsys, f"{unfinished} holds a run that has not finished (its training "
               "stopped after epoch 2 of 2)", "run the same command plus --resume",
               "choose another --out", f"rm -r {unfinished}")
        assert _state(unfinished) == before and not (unfinished / "results.json").exists()
    # --resume continues it: the checkpoint is of the last epoch, so it only finishes.
    assert main([*_train("ml-100k", unfinished, "--epochs", "2", "--resume"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["epochs"] == 2
    assert [r["epoch"] for r in RunDir(unfinished).metrics()] == [1, 2]


def test_a_finished_run_is_not_trained_over_without_resume(
        finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = {**_state(run), "results.json": (run / "results.json").read_bytes()}
    _fails(_train("ml-100k", run, "--epochs", "1"), capsys,
           f"{run} already holds a finished run", "pass --resume", "choose another --out")
    _fails(["refit", str(finished), "--out", str(run)], capsys, "already holds a finished run")
    assert {**_state(run), "results.json": (run / "results.json").read_bytes()} == before


# ---- 4: a diverged model ---------------------------------------------------------------
def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(
        small_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(_train(str(small_csv), out, "--epochs", "1")) == 0
    capsys.readouterr()
    before = _state(out)
    # The learning rate of the report: the weights overflow after one step.
    err = _fails(_train(str(small_csv), out, "--epochs", "3", "--resume", "--set",
                        "train.lr=1e30"), capsys,
                 f"training diverged in epoch 2 of {out}",
                 "the checkpoint of epoch 1 is kept", "--resume --set train.lr=1e+29")
    assert "HR" not in err
    assert (out / "checkpoint.pt").read_bytes() == before["checkpoint.pt"]
    assert (out / "model.pt").read_bytes() == before["model.pt"]
    assert [r["epoch"] for r in RunDir(out).metrics()] == [1]
    # A lower learning rate continues from it.
    assert main([*_train(str(small_csv), out, "--epochs", "2", "--resume"), "--json"]) == 0
    results = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert results["epochs"] == 2 and results["hr@1"] < 1.0

    fresh = tmp_path / "fresh"  # diverged in its first epoch: nothing to continue from
    err = _fails(_train(str(small_csv), fresh, "--epochs", "2", "--set", "train.lr=1e30"),
                 capsys, "training diverged in epoch 1",
                 "no checkpoint to continue from", "--set train.lr=1e+29")
    assert "--resume" not in err and not fresh.exists()


def test_nan_weights_are_refused_by_evaluate_recommend_and_export(
        finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "nan"
    shutil.copytree(finished, run)
    state = torch.load(run / "model.pt", weights_only=True)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in state.items()}
    torch.save(state, run / "model.pt")
    expected = f"{run / 'model.pt'} holds NaN or infinite weights"
    _fails(["evaluate", str(run)], capsys, expected, "lower learning rate")
    _fails(["recommend", str(run), "--user", "196"], capsys, expected)
    _fails(["export", str(run), "--out", str(tmp_path / "bundle")], capsys, expected)
    assert not (tmp_path / "bundle").exists()

    # Finite weights whose products overflow (as the report's lr=1e30 left them): the
    # scores are refused, not ranked.
    state = torch.load(finished / "model.pt", weights_only=True)
    torch.save({k: v * 1e30 if v.is_floating_point() else v for k, v in state.items()},
               run / "model.pt")
    _fails(["evaluate", str(run)], capsys, f"{run}: the model's scores are NaN or infinite",
           "lower learning rate")
    _fails(["recommend", str(run), "--user", "196"], capsys,
           f"{run}: the model scores this history's items NaN or infinite")


def test_the_recommender_refuses_nan_item_vectors(finished: Path) -> None:
    run = load_run(finished)
    with torch.no_grad():  # as if scoring overflowed: load_run's check is behind us
        for parameter in run.model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(RunError, match="item vectors hold NaN or infinite values"):
        Recommender(run)


# ---- 13: data too small for the split ----------------------------------------------------
def _events(path: Path, per_user: int, users: int = 5) -> Path:
    """``per_user`` events for each user, the i-th of every user at the same time."""
    rows = [(u, u + i, i + 1) for u in range(1, users + 1) for i in range(per_user)]
    pd.DataFrame(rows, columns=["user", "item", "timestamp"]).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("per_user", "split", "expected"), [
    (1, "loo", "after the loo split no user has a validation target: every user needs at "
     "least 3 events"),
    (2, "loo", "5 of the 5 users of 'data' have fewer. Use a file with more events per user"),
    (2, "loo-no-valid", "after the loo-no-valid split no user has a test target"),
    (2, "temporal", "after the temporal split no user has a validation target"),
])
def test_data_too_small_for_the_split_is_refused_before_training(
        per_user: int, split: str, expected: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    data = _events(tmp_path / "data.csv", per_user)
    out = tmp_path / "run"
    err = _fails([*_train(str(data), out, "--epochs", "1"), "--split", split], capsys, expected)
    assert "no ranks" not in err and "zero-size array" not in err and not out.exists()


def test_a_temporal_split_without_training_pairs_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 40 users with one event each, three of them with one more: there are validation
    # and test targets, but before the 80% time quantile no user has two events.
    rows = [(u, u, u) for u in range(1, 41)] + [(1, 41, 36), (2, 42, 37), (3, 43, 200)]
    data = tmp_path / "late.csv"
    pd.DataFrame(rows, columns=["user", "item", "timestamp"]).to_csv(data, index=False)
    _fails([*_train(str(data), tmp_path / "run", "--epochs", "1"), "--split", "temporal"],
           capsys, "no user of 'late' has two or more events to train on")


# ---- 15: an unfinished run says so ---------------------------------------------------------
def test_an_unfinished_run_is_exported_only_on_request_and_says_so(
        unfinished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    bundle = tmp_path / "bundle"
    _fails(["export", str(unfinished), "--out", str(bundle)], capsys,
           f"{unfinished} has not finished training (no results.json; it stopped after epoch "
           "2 of 2)", "--resume", "--unfinished")
    assert not bundle.exists()
    with caplog.at_level(logging.WARNING, logger="modrec.runs"):
        assert main(["export", str(unfinished), "--out", str(bundle), "--unfinished",
                     "--json"]) == 0
        recorded = json.loads((bundle / "bundle.json").read_text())
        assert recorded["finished"] is False and recorded["epoch_reached"] == 2
        for argv in (["evaluate", str(unfinished)],
                     ["recommend", str(unfinished), "--user", "196"],
                     ["evaluate", str(bundle)]):
            caplog.clear()
            assert main(argv) == 0
            warned = " ".join(r.getMessage() for r in caplog.records)
            assert "training has not finished" in warned, argv
            assert "stopped after epoch 2 of 2" in warned, argv
    assert "export it again" in warned  # a bundle cannot be resumed; its run can


def test_a_finished_run_loads_and_exports_without_a_warning(
        finished: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="modrec.runs"):
        assert main(["export", str(finished), "--out", str(tmp_path / "bundle")]) == 0
        assert main(["evaluate", str(tmp_path / "bundle")]) == 0
    assert not [r for r in caplog.records if "not finished" in r.getMessage()]
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["finished"] is True
