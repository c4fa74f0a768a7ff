"""Progress (issue 40): a bar on a terminal; elsewhere (a log file, a pipe) log lines and
never a carriage return, for training and for the content jobs alike."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from modrec.cli import main
from modrec.progress import LogLines, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_a_file_gets_lines(caplog: pytest.LogCaptureFixture) -> None:
    terminal = Terminal()
    for _ in progress_bar(range(20), total=20, desc="job", unit="item", stream=terminal):
        pass
    assert "\r" in terminal.getvalue() and "job" in terminal.getvalue()

    log_file = io.StringIO()
    with caplog.at_level(logging.INFO, logger="modrec.progress"):
        bar = progress_bar(range(20), total=20, desc="job", unit="item", stream=log_file,
                           interval=0.0)
        assert isinstance(bar, LogLines)
        for _ in bar:
            bar.set_postfix(failures=0)
    assert log_file.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    # one line per tenth of the job, and one at its end
    assert len(lines) == 11 and not any("\r" in line for line in lines)
    assert lines[0].startswith("job: 10% (2/20 item)") and "failures=0" in lines[0]
    assert lines[-1].startswith("job: 100% (20/20 item)")


def test_a_short_job_off_a_terminal_logs_nothing_and_disabled_shows_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="modrec.progress"):
        bar = progress_bar(total=5, desc="job", stream=stream)  # the default 30 s apart
        for _ in range(5):
            bar.update(1)
        bar.close()
        for _ in progress_bar(range(5), total=5, desc="job", enabled=False,
                              stream=Terminal()):
            pass
    assert stream.getvalue() == "" and caplog.records == []


def test_training_into_a_log_file_writes_no_carriage_returns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Standard error is captured here, not a terminal: as `make demo > demo.log 2>&1`.
    assert main(["train", "-d", "ml-100k", "-m", "sasrec", "--epochs", "2", "--out",
                 str(tmp_path / "run"), "--set", "model.max_len=20", "--set",
                 "model.num_blocks=1", "--set", "train.eval_every=2"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "batch/s" not in err


def test_embedding_into_a_log_file_writes_no_carriage_returns(
        ml100k, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modrec.content import EmbeddingStore, embed

    embed(ml100k, ["tags:genres"], EmbeddingStore.for_dataset(ml100k, tmp_path / "store"),
          progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "item/s" not in err
