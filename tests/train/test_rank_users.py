"""``data.rank_users``: under torchrun each rank reads only its block of users from the
cached dataset's row groups. The blocks cover the dataset once, the known-items mask is
the one-process mask, evaluation equals the whole-data evaluation of the same weights,
and ``torchrun -m modrec train`` with the setting writes a loadable run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from modrec.config import build_config
from modrec.data import Dataset, leave_one_out
from modrec.data import dataset as dataset_module
from modrec.data.batches import Shard, batch_order, local_batch_size, local_batches
from modrec.data.dataset import ensure_row_groups, read_user_block, user_block
from support import spawn_gloo, torchrun_train

# two processes each (torchrun or torch.multiprocessing): `-m 'not distributed'` skips them
pytestmark = pytest.mark.distributed

SMALL = ["model.max_len=30", "model.num_blocks=1", "train.batch_size=64",
         "train.eval_batch_size=256"]


def test_save_writes_row_groups_and_keeps_the_fingerprint(
        ml100k: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_module, "ROW_GROUP", 10_000)
    ml100k.save(tmp_path / "grouped")
    meta = pq.ParquetFile(tmp_path / "grouped" / "interactions.parquet").metadata
    assert meta.num_row_groups == 10
    manifest = json.loads((tmp_path / "grouped" / "manifest.json").read_text())
    assert manifest["fingerprint"] == ml100k.fingerprint()
    assert Dataset.read(tmp_path / "grouped").fingerprint() == ml100k.fingerprint()
    # A folder an older save wrote in one row group is laid out again, rows unchanged.
    old = tmp_path / "old"
    old.mkdir()
    ml100k.interactions.to_parquet(old / "interactions.parquet", index=False)
    ml100k.users.to_parquet(old / "users.parquet", index=False)
    ml100k.items.to_parquet(old / "items.parquet", index=False)
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert pq.ParquetFile(old / "interactions.parquet").metadata.num_row_groups == 1
    assert ensure_row_groups(old) and not ensure_row_groups(old)
    assert pq.ParquetFile(old / "interactions.parquet").metadata.num_row_groups == 10
    assert Dataset.read(old).fingerprint() == ml100k.fingerprint()


def test_user_blocks_read_only_their_row_groups_and_cover_the_dataset(
        ml100k: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_module, "ROW_GROUP", 10_000)
    folder = ml100k.save(tmp_path / "ds")
    read: list[int] = []
    original = pq.ParquetFile.read_row_group

    def counting(self: Any, group: int, *args: Any, **kwargs: Any) -> Any:
        read.append(group)
        return original(self, group, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    parts = [read_user_block(folder, *user_block(ml100k.num_users, r, 3)) for r in range(3)]
    # 3 blocks of 10 interaction row groups (plus one users group each): each block
    # reads its own groups and at most the one it shares with a neighbour.
    assert len(read) <= 3 + 10 + 2 * 2
    whole = pd.concat([p.interactions for p in parts], ignore_index=True)
    pd.testing.assert_frame_equal(whole, ml100k.interactions)
    for part in parts:
        users = part.interactions["user"]
        assert users.min() >= part.start and users.max() < part.stop
        assert part.users["user"].tolist() == list(range(part.start, part.stop))
        assert part.num_users == ml100k.num_users and part.num_items == ml100k.num_items
        assert part.fingerprint() == ml100k.fingerprint()
    # Splits are per user: the blocks' known items together are the whole data's.
    known = np.logical_or.reduce([leave_one_out(p).known_items() for p in parts])
    np.testing.assert_array_equal(known, leave_one_out(ml100k).known_items())
    assert sum(len(leave_one_out(p).test) for p in parts) == len(leave_one_out(ml100k).test)


def test_local_batches_make_the_global_batch() -> None:
    assert [local_batch_size(65, r, 2) for r in (0, 1)] == [33, 32]
    counts = [100, 80]  # examples on ranks 0 and 1
    steps = min(local_batches(c, 64, r, 2) for r, c in enumerate(counts))
    assert steps == 3
    parts = [batch_order(np.ones(c, np.int64), 64, np.random.default_rng(0),
                         Shard(r, 2, np.random.default_rng([1, r]), steps))
             for r, c in enumerate(counts)]
    assert [len(b) for b in parts[0]] == [32, 32, 32]
    assert [len(b) for b in parts[1]] == [32, 32, 16]
    assert all(len(np.unique(np.concatenate(p))) == sum(map(len, p)) for p in parts)


def _worker(rank: int, out: Path) -> None:
    from modrec.train.loop import evaluate_on, setup

    config = build_config("ml-100k", "sasrec", overrides=[*SMALL, "data.rank_users=true"])
    session = setup(config, out / "run", show_progress=False)
    assert session.split.valid is not None
    metrics = {name: evaluate_on(session, session.model, evalset)
               for name, evalset in (("valid", session.split.valid),
                                     ("test", session.split.test))}
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rows": len(session.dataset.interactions),
        "users": sorted(set(session.dataset.interactions["user"].tolist())),
        "evaluated": len(session.split.test), "metrics": metrics}))
    if rank == 0:
        torch.save(session.model.state_dict(), out / "weights.pt")


def test_ranks_hold_their_users_and_evaluate_as_the_whole_data(
        ml100k: Dataset, tmp_path: Path) -> None:
    from modrec.runs import RunDir
    from modrec.train.loop import evaluate_on, setup

    spawn_gloo(_worker, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["rows"] + ranks[1]["rows"] == len(ml100k.interactions)
    assert max(ranks[0]["users"]) < min(ranks[1]["users"])  # two disjoint blocks
    assert all(r["rows"] < 0.6 * len(ml100k.interactions) for r in ranks)
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # every rank gets the same
    # The known mask rank 0 wrote is the one-process mask; the snapshot is the whole data.
    run = RunDir(tmp_path / "run")
    split = leave_one_out(ml100k)
    config = build_config("ml-100k", "sasrec", overrides=[*SMALL, "data.rank_users=true"])
    snapshot, known = run.snapshot(config)
    np.testing.assert_array_equal(known, split.known_items())
    assert snapshot.fingerprint() == ml100k.fingerprint()
    pd.testing.assert_frame_equal(snapshot.interactions, ml100k.interactions)
    # One process (the setting is ignored in a world of one), the same weights.
    single = setup(config, tmp_path / "single", show_progress=False)
    single.model.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    assert ranks[0]["evaluated"] + ranks[1]["evaluated"] == len(single.split.test)
    assert single.split.valid is not None
    for name, evalset in (("valid", single.split.valid), ("test", single.split.test)):
        whole = evaluate_on(single, single.model, evalset)
        assert whole == pytest.approx(ranks[0]["metrics"][name], rel=1e-6, abs=1e-9), name


def test_temporal_split_is_refused_with_rank_users() -> None:
    from modrec.train.loop import _check_rank_users

    config = build_config("ml-100k", "sasrec", overrides=["data.rank_users=true",
                                                           "data.split=temporal"])
    with pytest.raises(ValueError, match="temporal split"):
        _check_rank_users(config)


def test_torchrun_trains_with_rank_users_end_to_end(ml100k: Dataset, tmp_path: Path) -> None:
    from modrec.runs import load_run

    out = tmp_path / "ddp"
    results = torchrun_train(out, [*SMALL, "data.rank_users=true"])
    assert results["epochs"] == 1 and results["ndcg@10"] > 0.01
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["data"]["rank_users"] is True
    assert config["dataset_info"]["fingerprint"] == ml100k.fingerprint()
    run = load_run(out)
    assert run.dataset.fingerprint() == ml100k.fingerprint()
    assert len(run.dataset.interactions) == len(ml100k.interactions)
