"""The replay benchmark (issue 39, item 4) on a small slice of ml-100k: the same
numbers twice, through real `modrec serve` processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import replay as replay_module  # noqa: E402 - benchmarks/ is not a package


@pytest.mark.slow
def test_replay_gives_the_same_numbers_twice(ml100k, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODREC_EMBEDDINGS_DIR", str(tmp_path / "embeddings"))
    # The last 300 events of the log are replayed; the 2,000 before them are the history
    # a 1-epoch model is trained on (so many replayed items are new to it).
    events = replay_module.time_ordered(ml100k).iloc[-2300:].reset_index(drop=True)
    log = replay_module.split_at(events, ml100k.items, int(events["timestamp"].iloc[2000]))
    assert 250 <= len(log.after) <= 300 and log.after["new_item"].any()
    data = replay_module.before_dataset(log, tmp_path / "before-cut")
    encoders = replay_module.ENCODERS.split(",")
    run, _ = replay_module.initial_run(data, tmp_path / "initial", encoders, [
        "train.epochs=1", "model.max_len=30", "model.num_blocks=1"])

    first = [replay_module.replay(run, log, v, tmp_path / "first", encoders=encoders)
             for v in ("a", "b")]
    second = [replay_module.replay(run, log, v, tmp_path / "second", encoders=encoders)
              for v in ("a", "b")]

    assert [r.numbers() for r in first] == [r.numbers() for r in second]
    a, b = (replay_module.summary(r, log.after) for r in first)
    assert len(first[0].hits) == len(log.after)
    for result in first:  # the top 10 is the head of the top 100 the rank is read from
        assert result.hits == [int(0 <= rank < 10) for rank in result.ranks]
    assert a["new"][0] == 0.0  # (a) cannot recommend an item it was never told of
    assert first[0].posted_items == 0
    assert first[1].posted_items == log.after.loc[log.after["new_item"], "item_id"].nunique()
