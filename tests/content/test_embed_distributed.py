"""Sharded extraction on two gloo processes spawned inside the test: ``modrec embed``
under a two-rank world fills the store exactly as one process does, rank 1 writes
no manifest, ids or mask, only rank 0 prints, and a partly done store is completed by
encoding only the rest."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from modrec.content import EmbeddingStore, embed
from support import free_port

# two processes each (torchrun or torch.multiprocessing): `-m 'not distributed'` skips them
pytestmark = pytest.mark.distributed

SPEC, NAME, BATCH = "tags:genres", "tags-genres", 100  # 1,682 items: 17 batches, 9 rounds


def _join(rank: int, port: int, out: Path, env: dict[str, str]) -> None:
    os.environ.update({**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    torch.set_num_threads(1)  # two processes on a 2-core machine
    try:
        _worker(rank, out)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _worker(rank: int, out: Path) -> None:
    from modrec import cli
    from modrec.content import store as store_module
    from modrec.content.embed_job import extraction_world, open_store
    from modrec.data import load_dataset

    if rank == 1:  # rank 1 writes rows only: never the ids, manifest or masks
        def refuse(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("rank 1 replaced a store file")

        store_module.write_text_atomic = refuse  # type: ignore[assignment]
        store_module._save_npy = refuse
    written: list[int] = []  # the rows this rank encoded and wrote
    write_rows = store_module.EmbeddingStore.write_rows

    def count(self: Any, name: str, rows: np.ndarray, vectors: np.ndarray) -> None:
        written.append(len(rows))
        write_rows(self, name, rows, vectors)

    store_module.EmbeddingStore.write_rows = count  # type: ignore[method-assign]
    # The command line, into a new store: rank 0 alone prints the JSON report.
    with (out / f"stdout{rank}.txt").open("w") as f, contextlib.redirect_stdout(f):
        code = cli.main(["embed", "-d", "ml-100k", "--encoder", SPEC, "--store",
                         str(out / "cli"), "--batch-size", str(BATCH), "--json",
                         "--no-progress"])
    assert code == 0
    # The Python API, resuming a store that one process left partly done.
    dataset = load_dataset("ml-100k")
    world = extraction_world()
    store = open_store(dataset, out / "resume", world)
    [report] = embed(dataset, [SPEC], store, batch_size=BATCH, progress=False, world=world)
    (out / f"report{rank}.json").write_text(json.dumps({**report.to_dict(),
                                                        "written": written}))


def test_two_ranks_fill_the_store_as_one_process_and_resume(ml100k, tmp_path: Path) -> None:
    single = EmbeddingStore.for_dataset(ml100k, tmp_path / "single")
    embed(ml100k, [SPEC], single, batch_size=BATCH, progress=False)
    # A store interrupted after some rows: 600 marked done (holding a sentinel that a
    # re-encoding would overwrite), 100 written but never marked.
    partial = EmbeddingStore.for_dataset(ml100k, tmp_path / "resume")
    embed(ml100k, [SPEC], partial, batch_size=BATCH, progress=False)
    done = np.zeros(partial.num_rows, bool)
    done[1:601] = True
    matrix = np.load(partial._file(NAME), mmap_mode="r+")
    matrix[1:601] = 7.0
    matrix[701:] = 0.0
    matrix.flush()
    del matrix
    np.save(partial._file(NAME, ".done"), done)

    env = {"OMP_NUM_THREADS": "1", "MODREC_CACHE_DIR": os.environ["MODREC_CACHE_DIR"],
           "MODREC_DATA_DIR": os.environ["MODREC_DATA_DIR"]}
    mp.start_processes(_join, args=(free_port(), tmp_path, env), nprocs=2,
                       start_method="spawn")

    cli = EmbeddingStore.for_dataset(ml100k, tmp_path / "cli")
    np.testing.assert_array_equal(cli.matrix(NAME), single.matrix(NAME))
    np.testing.assert_array_equal(cli.done(NAME), single.done(NAME))
    np.testing.assert_array_equal(cli.failed(NAME), single.failed(NAME))
    assert cli.validate()[NAME] == single.validate()[NAME]
    assert (tmp_path / "stdout1.txt").read_text() == ""
    printed = json.loads((tmp_path / "stdout0.txt").read_text())
    [report] = printed["encoders"]
    assert report["encoded"] + report["failures"] == ml100k.num_items
    assert report["already_stored"] == 0

    resumed = EmbeddingStore.for_dataset(ml100k, tmp_path / "resume")
    np.testing.assert_array_equal(resumed.matrix(NAME)[1:601], 7.0)  # not encoded again
    np.testing.assert_array_equal(resumed.matrix(NAME)[601:], single.matrix(NAME)[601:])
    np.testing.assert_array_equal(resumed.done(NAME), single.done(NAME))
    np.testing.assert_array_equal(resumed.failed(NAME), single.failed(NAME))
    reports = [json.loads((tmp_path / f"report{r}.json").read_text()) for r in (0, 1)]
    # Rank 0 wrote batches 0, 2, ..., 16 of the first job (the last one 82 rows) and
    # 0, 2, ..., 10 of the second (1,082 rows: the last one 82 again); rank 1 the others.
    assert reports[0]["written"] == [BATCH] * 8 + [82] + [BATCH] * 5 + [82]
    assert reports[1]["written"] == [BATCH] * 8 + [BATCH] * 5
    for r in reports:
        r.pop("seconds"), r.pop("items_per_second"), r.pop("written")
    assert reports[0] == reports[1]  # every rank reports the whole job
    assert reports[0]["already_stored"] == 600
    assert reports[0]["encoded"] + reports[0]["failures"] == ml100k.num_items - 600
