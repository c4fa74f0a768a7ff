"""Every verb answers misuse with one clear message and exit status 2, never a
traceback; a failed command leaves no half-made folder; ``--json`` is strict JSON; a
run records its dataset by absolute path and a fingerprint (issue 30, promise 6)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import modrec.cli.data as cli_data
from modrec.cli import main
from modrec.config import build_config
from modrec.errors import ConfigError, NotFoundError, UsageError
from modrec.train import train
from support import craft_weights, free_port

SMALL = ["model.max_len=20", "model.num_blocks=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = build_config("ml-100k", "sasrec", overrides=["train.epochs=1", *SMALL])
    return train(config, tmp_path_factory.mktemp("run") / "run", progress=False)


@pytest.fixture(scope="module")
def store(ml100k, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modrec.content import EmbeddingStore, embed

    folder = tmp_path_factory.mktemp("store") / "ml-100k"
    embed(ml100k, ["tags:genres"], EmbeddingStore.for_dataset(ml100k, folder), progress=False)
    return folder


def _fails(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``modrec ARGV`` exits with 2 and one message containing ``expected``."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    assert expected in err, (argv, err)
    assert "Traceback" not in err, (argv, err)
    return err


def _damaged(run: Path, tmp_path: Path, name: str, change: Callable[[Path], object]) -> Path:
    copy = tmp_path / name
    shutil.copytree(run, copy)
    change(copy)
    return copy


def test_train_refuses_bad_settings_without_leaving_a_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    foreign = tmp_path / "papers"
    foreign.mkdir()
    (foreign / "draft.txt").write_text("not a run")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    base = ["train", "-d", "ml-100k", "-m", "sasrec", "--no-progress", "--out", str(out)]
    cases = [
        (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
        (["--epochs", "-3"], "must be at least 1"),
        (["--epochs", "many"], "expected a whole number, got 'many'"),
        (["--split", "random"], "invalid choice: 'random'"),
        (["-m", "transformer"], "'transformer' is not a registered model"),
        (["--set", "model.dim=0"], "model.dim: must be at least 1, got 0"),
        (["--set", "model.max_len=-1"], "model.max_len: must be at least 1"),
        (["--set", "model.num_blocks=0"], "model.num_blocks: must be at least 1"),
        (["--set", "model.dropout=1.5"], "model.dropout"),
        (["--set", "train.batch_size=0"], "train.batch_size"),
        (["--set", "train.lr=-1"], "train.lr"),
        (["--set", "train.patience=0"], "train.patience"),
        (["--set", "loss.num_negatives=0"], "loss.num_negatives"),
        (["--set", "loss.temperature=0"], "loss.temperature"),
        (["--set", "train.lr=fast"], "train.lr"),
        (["--set", "train.lr=[1"], "the value is not YAML"),
        (["--set", "nonsense"], "section.key=value"),
        (["--set", "train.no_such_key=1"], "no_such_key"),
        (["--config", str(tmp_path / "missing.yaml")], "no such file"),
        (["--config", str(tmp_path / "bad.yaml")], "is not a YAML file modrec can read"),
        (["--columns", "user"], "expected role=column pairs"),
        (["-d", "no/such/data.csv"], "relative paths start from"),
        (["--item-tower", "content", "--encoder", "smell"], "no 'smell' embeddings"),
    ]
    for extra, expected in cases:
        _fails([*base, *extra], expected, capsys)
        assert not out.exists(), extra
    _fails([*base[:-1], str(foreign), "--epochs", "1"], "is not a run directory", capsys)
    assert sorted(p.name for p in foreign.iterdir()) == ["draft.txt"]


def test_run_folders_with_corrupt_files_are_named(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    damaged: list[tuple[str, Callable[[Path], object]]] = [
        ("config.json is not a readable run configuration",
         lambda f: (f / "config.json").write_text('{"data": ')),
        ("config.json: expected a JSON object", lambda f: (f / "config.json").write_text("[]")),
        ("invalid configuration: model.dim", lambda f: (f / "config.json").write_text(
            (f / "config.json").read_text().replace('"dim": 50', '"dim": "wide"'))),
        ("model.pt is not a weights file", lambda f: (f / "model.pt").write_bytes(
            (f / "model.pt").read_bytes()[:500])),
        ("model.pt is not a weights file", lambda f: (f / "model.pt").write_bytes(b"")),
        ("does not fit the model in config.json",
         lambda f: torch.save({"w": torch.zeros(3)}, f / "model.pt")),
        ("known.npy is unreadable", lambda f: (f / "known.npy").write_text("garbage")),
        ("is not a mask of the snapshot's", lambda f: np.save(f / "known.npy", np.ones(3, bool))),
        ("damaged modrec dataset", lambda f: (f / "dataset" / "items.parquet").write_text("x")),
    ]
    for i, (expected, change) in enumerate(damaged):
        folder = _damaged(run, tmp_path, f"damaged{i}", change)
        _fails(["evaluate", str(folder)], expected, capsys)
        _fails(["recommend", str(folder), "--user", "196"], expected, capsys)
        _fails(["export", str(folder), "--out", str(tmp_path / f"bundle{i}")], expected, capsys)
        assert not (tmp_path / f"bundle{i}").exists()
    _fails(["evaluate", str(tmp_path / "nowhere")], "not a run directory", capsys)
    results = _damaged(run, tmp_path, "results", lambda f: (f / "results.json").write_text("["))
    _fails(["refit", str(results), "--out", str(tmp_path / "refit")], "results.json is unreadable",
           capsys)
    assert not (tmp_path / "refit").exists()
    _fails(["refit", str(tmp_path / "nowhere")], "has no results.json", capsys)
    _fails(["refit", str(run), "--out", str(run)], "already holds a finished run", capsys)


def test_recommend_export_serve_refuse_bad_arguments(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["recommend", str(run), "--user", "no-such-user"], "is not in dataset", capsys)
    _fails(["recommend", str(run), "--user", "196", "-k", "0"], "k must be at least 1", capsys)
    _fails(["recommend", str(run), "--user", "196", "-k", "ten"], "invalid int value", capsys)
    _fails(["recommend", str(run)], "the following arguments are required: --user", capsys)
    _fails(["export", str(run), "--out", str(run)], "exists and is not empty", capsys)
    empty_key = tmp_path / "key"
    empty_key.write_text("\n")
    serve = ["serve", str(run), "--state", str(tmp_path / "state.db")]
    for extra, expected in [
        (["--port", "0"], "argument --port: must be at least 1"),
        (["--port", "70000"], "a TCP port is at most 65535"),
        (["--max-k", "0"], "argument --max-k: must be at least 1"),
        (["--max-batch", "-1"], "argument --max-batch: must be at least 1"),
        (["--workers", "0"], "argument --workers: must be at least 1"),
        (["--batch-window-ms", "nan"], "must be a finite number of at least 0"),
        (["--batch-window-ms", "-2"], "must be a finite number of at least 0"),
        (["--ef-search", "0"], "argument --ef-search: must be at least 1"),
        (["--model", "nameless"], "expected NAME=RUN_DIR"),
        (["--model", f"{run.name}={run}"], "is given twice"),
        (["--model", f"other={tmp_path}"], "is not a run directory"),
        (["--api-key-file", str(tmp_path / "missing")], "No such file or directory"),
        (["--api-key-file", str(empty_key)], "is empty"),
    ]:
        _fails([*serve, *extra], expected, capsys)
    with socket.socket() as taken:  # a port in use: named, before any worker starts
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        _fails(["serve", str(run), "--state", str(tmp_path / "taken.db"), "--workers", "2",
                "--port", port], f"cannot listen on 127.0.0.1:{port}", capsys)
    _fails(["serve"], "name a run to serve", capsys)
    broken = _damaged(run, tmp_path, "broken", lambda f: (f / "config.json").write_text("{"))
    _fails(["serve", str(broken), "--state", str(tmp_path / "state.db")],
           "not a readable run configuration", capsys)
    assert not (tmp_path / "state.db").exists()  # refused before anything was started


def test_serve_refuses_a_state_it_cannot_use_at_start_up(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, each was ``internal error: OperationalError: unable to open database
    file`` (or a service that never got ready), without the path."""
    import sqlite3

    folder = tmp_path / "states"
    folder.mkdir()
    text = tmp_path / "notes.db"
    text.write_text("not a database, just notes\n" * 20)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE events (id INTEGER, payload TEXT)")
    db.close()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    # Permissions do not bind root: a folder of /proc is read-only to everyone.
    read_only = (Path("/proc/modrec-state.db") if os.geteuid() == 0
                 else locked / "state.db")
    before = {p: p.read_bytes() for p in (text, foreign, a_file)}
    for state, expected in [
        (folder, f"user state {folder} is a folder, not an SQLite file; pass a file path"),
        (text, f"user state {text} is not an SQLite database"),
        (foreign, f"user state {foreign} is an SQLite database of something else"),
        (a_file / "state.db", f"user state {a_file / 'state.db'}: cannot make its folder"),
        (read_only, f"user state {read_only} cannot be opened or created"),
    ]:
        for extra in ([], ["--seed-state"]):
            err = _fails(["serve", str(run), "--state", str(state), "--port",
                          str(free_port()), *extra], expected, capsys)
            assert "file path" in err and "internal error" not in err
    assert not list(folder.iterdir()) and not list(locked.iterdir())
    assert {p: p.read_bytes() for p in before} == before  # nothing written to them


def test_serve_exits_at_start_up_when_it_refuses_the_weights(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A crafted model.pt: exit 2 with the reason once, not a service answering 503 on
    /readyz forever."""
    crafted = _damaged(run, tmp_path, "crafted",
                       lambda f: craft_weights(f / "model.pt", tmp_path / "pwned"))
    err = _fails(["serve", str(crafted), "--state", str(tmp_path / "state.db"), "--port",
                  str(free_port())], f"{crafted / 'model.pt'} is not a weights file", capsys)
    assert err.count("is not a weights file") == 1
    # With workers: the first one's reason, from the supervisor, and nothing left running
    _fails(["serve", str(crafted), "--state", str(tmp_path / "state.db"), "--port",
            str(free_port()), "--workers", "2"], "is not a weights file", capsys)
    assert not (tmp_path / "pwned").exists()


def test_device_and_store_are_checked_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--device cuda`` on a torch without CUDA was ``internal error: AssertionError``,
    an unknown device printed torch's whole device list, and a --store naming a file
    ``[Errno 17]``."""
    if torch.version.cuda is None and torch.version.hip is None:
        missing, why = "cuda", "has no CUDA support; install a CUDA build of PyTorch"
    elif torch.cuda.device_count() == 0:
        missing, why = "cuda", "sees no GPU"
    else:
        missing, why = f"cuda:{torch.cuda.device_count()}", "visible here (cuda:0 to"
    store = tmp_path / "store"
    a_file = tmp_path / "vectors.npy"
    a_file.write_text("x")
    verbs = [["embed", "-d", "ml-100k", "--encoder", "text", "--store", str(store)],
             ["transcribe", "-d", "ml-100k", "--store", str(store)]]
    for verb in verbs:
        err = _fails([*verb, "--device", missing], f"argument --device: {missing}: ", capsys)
        assert why in err and "AssertionError" not in err
        err = _fails([*verb, "--device", "banana"], "argument --device: unknown device "
                     "'banana'; expected cpu, cuda, cuda:N (the N-th GPU) or mps", capsys)
        assert "privateuseone" not in err  # not torch's list of every device type
        for odd in ("cuda:x", "gpu", "CPU", "cuda:-1"):
            _fails([*verb, "--device", odd], f"unknown device '{odd}'", capsys)
        if not torch.backends.mps.is_available():
            _fails([*verb, "--device", "mps"], "mps: no Apple GPU here", capsys)
        assert not store.exists()
    for verb in ("embed", "classify", "search"):
        argv = [verb, "-d", "ml-100k", "--store", str(a_file)]
        argv += {"embed": ["--encoder", "tags:genres"], "classify": [
            "--labels", "genres", "--encoder", "tags-genres"], "search": ["star wars"]}[verb]
        _fails(argv, f"the store {a_file} is a file, not a folder; pass a folder", capsys)
    _fails(["transcribe", "-d", "ml-100k", "--store", str(a_file)],
           f"the store {a_file} is a file, not a folder", capsys)
    assert a_file.read_text() == "x"


def test_embed_classify_search_refuse_bad_arguments(
        store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = tmp_path / "new-store"
    for extra, expected in [
        (["--encoder", "smell"], "unknown encoder 'smell'"),
        (["--encoder", ""], "unknown encoder ''"),
        (["--encoder", "tags:no_column"], "no item column 'no_column'"),
        (["--encoder", "tags:genres", "--batch-size", "0"], "must be at least 1, got 0"),
        (["--encoder", "tags:genres", "--dtype", "int8"], "invalid choice: 'int8'"),
    ]:
        _fails(["embed", "-d", "ml-100k", "--store", str(new), *extra], expected, capsys)
        assert not new.exists(), extra
    _fails(["embed", "-d", "nowhere.csv", "--encoder", "tags"], "relative paths start from",
           capsys)
    classify = ["classify", "-d", "ml-100k", "--labels", "class", "--store", str(store)]
    _fails([*classify, "--encoder", "text"], "no 'text' embeddings", capsys)
    _fails([*classify, "--encoder", "tags-genres", "-k", "0"], "must be at least 1", capsys)
    _fails([*classify, "--encoder", "tags-genres", "--max-labels", "0"], "must be at least 1",
           capsys)
    _fails([*classify, "--encoder", "tags-genres", "--mode", "guess"], "invalid choice", capsys)
    for verb in (classify, ["search", "-d", "ml-100k", "--labels", "genres", "--store",
                            str(store)]):  # a template naming another field: a bare KeyError
        _fails([*verb, "--encoder", "tags-genres", "--template", "a {genre} movie"],
               "argument --template: 'a {genre} movie' is not a template of {label}", capsys)
    _fails(["classify", "-d", "ml-100k", "--labels", "nope", "--encoder", "tags-genres",
            "--store", str(store)], "no item column 'nope'", capsys)
    search = ["search", "-d", "ml-100k", "--store", str(store)]
    _fails(search, "give a query", capsys)
    _fails([*search, "star wars", "-k", "0"], "must be at least 1", capsys)
    _fails([*search, "star wars"], "no 'text' embeddings", capsys)
    _fails([*search, "star wars", "--encoder", "tags-genres"], "not text", capsys)
    _fails(["datasets", "--all"], "unrecognized arguments: --all", capsys)
    _fails(["fly"], "invalid choice: 'fly'", capsys)


def test_transcribe_refuses_bad_arguments(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    transcribe = ["transcribe", "-d", "ml-100k", "--store", str(tmp_path / "store")]
    _fails(transcribe, "no item column 'video'", capsys)
    _fails([*transcribe, "--parts", "subtitles"], "unknown part subtitles", capsys)
    _fails([*transcribe, "--frames", "0"], "must be at least 1, got 0", capsys)
    _fails([*transcribe, "--top-labels", "x"], "expected a whole number", capsys)
    assert not (tmp_path / "store").exists()  # refused before anything was written
    _fails(["embed", "-d", "ml-100k", "--store", str(tmp_path / "store"), "--encoder",
            "text:video_text"], "run `modrec transcribe -d ml-100k` first", capsys)


def test_a_bug_is_named_in_one_line_and_its_traceback_is_one_flag_away(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args: object) -> dict[str, object]:
        return {"ratio": 1 / 0}

    monkeypatch.setattr(cli_data, "cmd_datasets", broken)
    assert main(["datasets"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: division by zero" in err
    assert "run with -v for the traceback" in err and "Traceback" not in err
    assert main(["datasets", "-v"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert main(["-v", "datasets"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("bug", [KeyError("config"), RuntimeError("lost the lock"),
                                 ValueError("negative count"), TypeError("not a list")])
def test_a_plain_error_from_deep_inside_a_verb_is_a_bug_not_a_user_mistake(
        bug: Exception, run: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A bare ValueError, KeyError or RuntimeError from a mistake in modrec was reported
    as the user's (``error: 'config'``, exit 2, no traceback even with -v's hint);
    only modrec's own errors, the world's (OSError) and a missing package's are."""
    import modrec.runs

    def broken(folder: object) -> object:
        raise bug

    monkeypatch.setattr(modrec.runs, "load_run", broken)
    assert main(["evaluate", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"modrec evaluate: internal error: {type(bug).__name__}: " in err
    assert "(run with -v for the traceback)" in err and "Traceback" not in err
    assert main(["evaluate", str(run), "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "raise bug" in err and "(run with -v" not in err


@pytest.mark.parametrize("error", [
    UsageError("no such thing; do this instead"), ConfigError("train.lr: too fast"),
    NotFoundError("user id 'x' is not in dataset 'd'"), FileNotFoundError("no such file"),
    ImportError("needs DuckDB: pip install 'modrec[large]'"),
    torch.OutOfMemoryError("CUDA out of memory (simulated)")])
def test_what_the_user_can_fix_is_one_message_and_exit_2(
        error: Exception, run: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import modrec.runs

    def refused(folder: object) -> object:
        raise error

    monkeypatch.setattr(modrec.runs, "load_run", refused)
    err = _fails(["evaluate", str(run)], str(error.args[0]), capsys)
    assert err.strip().splitlines() == [f"modrec evaluate: error: {error.args[0]}"]


def test_json_output_is_strict(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_data, "cmd_datasets", lambda args: {
        "nan": float("nan"), "inf": [float("inf"), np.float64("-inf")], "np": np.float32(0.5),
        "path": Path("/x")})
    assert main(["datasets", "--json"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    parsed = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert parsed == {"nan": None, "inf": [None, None], "np": "0.5", "path": "/x"}


def _small_csv(path: Path, data_dir: Path, users: int = 60) -> Path:
    ratings = pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t",
                          names=["user", "item", "rating", "timestamp"])
    ratings[ratings["user"] <= users].to_csv(path, index=False)
    return path


def test_a_run_records_its_dataset_by_absolute_path_and_fingerprint(
        tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    csv = _small_csv(work / "data" / "ratings.csv", data_dir)
    monkeypatch.chdir(work)
    assert main(["train", "-d", "data/ratings.csv", "-m", "sasrec", "--epochs", "1",
                 "--set", "model.max_len=20", "--set", "model.num_blocks=1",
                 "--out", "run", "--no-progress"]) == 0
    saved = json.loads((work / "run" / "config.json").read_text())
    assert saved["data"]["dataset"] == str(csv.resolve())
    assert len(saved["dataset_info"]["fingerprint"]) == 16
    # From another directory, the run's own record finds the data.
    monkeypatch.chdir(tmp_path)
    assert main(["refit", "work/run", "--out", "refit", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 1
    # The same path with other contents: resuming would continue on different data.
    _small_csv(csv, data_dir, users=50)
    before = {f: f.read_bytes() for f in (work / "run").rglob("*") if f.is_file()}
    _fails(["train", "-d", str(csv), "-m", "sasrec", "--epochs", "2", "--set",
            "model.max_len=20", "--set", "model.num_blocks=1", "--out", "work/run",
            "--resume", "--no-progress"], "was trained on other data", capsys)
    assert {f: f.read_bytes() for f in (work / "run").rglob("*") if f.is_file()} == before


def test_a_failure_mid_training_removes_a_new_folder_or_keeps_a_resumable_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from modrec.train import loop

    original = loop.train_epoch

    def failing_at(epoch: int) -> Callable[[loop.Session], dict[str, object]]:
        def train_epoch(session: loop.Session) -> dict[str, object]:
            if session.progress.epoch + 1 == epoch:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return original(session)
        return train_epoch

    args = ["train", "-d", "ml-100k", "-m", "sasrec", "--epochs", "3", "--no-progress",
            "--set", "model.max_len=20", "--set", "model.num_blocks=1"]
    monkeypatch.setattr(loop, "train_epoch", failing_at(1))
    _fails([*args, "--out", str(tmp_path / "first")], "out of memory (simulated)", capsys)
    assert not (tmp_path / "first").exists()  # nothing worth keeping: removed
    monkeypatch.setattr(loop, "train_epoch", failing_at(2))
    _fails([*args, "--out", str(tmp_path / "second")], "out of memory (simulated)", capsys)
    kept = tmp_path / "second"
    assert (kept / "checkpoint.pt").exists() and not (kept / "results.json").exists()
    monkeypatch.setattr(loop, "train_epoch", original)
    assert main([*args, "--out", str(kept), "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 3


@pytest.mark.slow
def test_the_installed_command_prints_no_traceback(run: Path, tmp_path: Path) -> None:
    """Through the real entry point (a new process), not only `main`."""
    broken = _damaged(run, tmp_path, "broken", lambda f: (f / "model.pt").write_text("x"))
    for argv, expected in [
        (["evaluate", str(broken)], "model.pt is not a weights file"),
        (["train", "-d", "ml-100k", "--epochs", "0"], "must be at least 1"),
        # the server starts, its loader fails, it stops: the reason once, at the end
        (["serve", str(broken), "--state", str(tmp_path / "state.db"), "--port",
          str(free_port())], "model.pt is not a weights file"),
    ]:
        done = subprocess.run([sys.executable, "-m", "modrec", *argv], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr and "Traceback" not in done.stderr
        assert done.stderr.count(expected) == 1, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(f"modrec {argv[0]}: error: ")
