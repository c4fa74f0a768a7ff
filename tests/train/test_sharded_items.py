"""The ID item table sharded by TorchRec (``model.item_table=sharded``), on two gloo
processes spawned inside the test: the sharded tower returns the local tower's
vectors, full-ranking evaluation read in blocks gives the local ranks, a step on two
ranks is the one-process step, no rank holds the whole table (row-wise), a sharded run
trains, evaluates and loads back, and it resumes from its checkpoint as if it had not
stopped."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modrec.config import build_config
from modrec.data import leave_one_out, load_dataset
from support import spawn_gloo

# two processes each (torchrun or torch.multiprocessing): `-m 'not distributed'` skips them
pytestmark = pytest.mark.distributed

SMALL = ["model.max_len=30", "model.num_blocks=1", "model.dim=16", "train.batch_size=256",
         "model.item_table=sharded"]


@pytest.fixture
def torchrec() -> Any:
    return pytest.importorskip("torchrec")


def _lookup_worker(rank: int, out: Path, sharding: str) -> None:
    from modrec.data.batches import SequenceBatch, TrainingExamples
    from modrec.distributed import World
    from modrec.eval.evaluator import rank_targets
    from modrec.models import build_model
    from modrec.train import sharded
    from modrec.train.loop import BatchLoss, train_step

    world = World.from_env()
    config = build_config("ml-100k", "sasrec", overrides=[
        *SMALL, "model.dropout=0.0", "loss.num_negatives=4"])
    dataset = load_dataset("ml-100k")
    split = leave_one_out(dataset)
    known = torch.from_numpy(split.known_items())
    torch.manual_seed(0)
    local = build_model(dataclasses.replace(config.model, item_table="local"),
                        dataset.num_items)
    model = build_model(config.model, dataset.num_items)
    for m in (local, model):
        m.set_known(known)
    # Plain SGD at rate 1 on the table (and below on the rest): a step subtracts
    # exactly the gradient.
    loss = sharded.shard(BatchLoss(model, config.loss, by_lookup=True), world, "cpu",
                         sharding, 1.0, optimizer="EXACT_SGD")
    # The same weights in both: the dense ones loaded, the table's rows copied in.
    table = sharded.table_of(model)
    assert table is not None
    initial = local.item_tower.embedding.weight.detach().clone()
    for start, rows in table.local_rows():
        rows.copy_(initial[start : start + len(rows)])
    sharded.load_dense_state(model, {k: v for k, v in local.state_dict().items()
                                     if not k.endswith("embedding.weight")})
    ids = torch.randint(0, dataset.num_items + 1, (7, 5 + rank),
                        generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        same_vectors = torch.equal(model.item_tower(ids), local.item_tower(ids))
    # Evaluation: each rank ranks its users against the catalog read in blocks.
    mine = np.zeros(len(split.valid), dtype=bool)
    mine[world.shard(len(split.valid))] = True
    block_ranks = sharded.rank_targets_sharded(model, split.valid.subset(mine),
                                               dataset.num_items, 30, 64, "cpu", world)
    local_ranks = rank_targets(local, split.valid.subset(mine), 30, 64)

    # One step: one process on the whole batch, then each rank on its rows of it.
    batch = next(local.training_batches(TrainingExamples.of(split.train, 30), 64,
                                        np.random.default_rng(1)))
    pool = torch.tensor([7])  # every negative is item 7: the same draws on both sides
    before = {k: v.clone() for k, v in local.state_dict().items()}
    train_step(BatchLoss(local, config.loss), torch.optim.SGD(local.parameters(), lr=1.0),
               batch, 1, None, pool)
    own = slice(rank, None, 2)
    train_step(loss, torch.optim.SGD(sharded.dense_parameters(model), lr=1.0),
               SequenceBatch(batch.inputs[own], batch.lengths[own], batch.targets[own]), 1,
               None, pool, world)
    stepped = local.item_tower.embedding.weight.detach()
    dense = sharded.dense_state(model)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "same_vectors": same_vectors, "same_ranks": bool(np.array_equal(block_ranks,
                                                                         local_ranks)),
        "users": int(mine.sum()), "catalog_rows": dataset.num_items + 1,
        "table_error": max([float((rows - stepped[start : start + len(rows)]).abs().max())
                            for start, rows in table.local_rows()], default=0.0),
        "table_step": float((stepped - initial).abs().max()),
        "dense_error": max(float((dense[k] - v).abs().max())
                           for k, v in local.state_dict().items() if k in dense),
        "dense_step": max(float((v - before[k]).abs().max())
                          for k, v in local.state_dict().items() if k in dense),
        **sharded.shard_sizes(table)}))


@pytest.mark.parametrize("sharding", ["row_wise", "table_wise"])
def test_the_sharded_tower_matches_the_local_one(
        torchrec: Any, tmp_path: Path, sharding: str) -> None:
    """Two ranks: the same vectors, the same full-ranking ranks (the catalog read in
    blocks), and the one-process step when each rank steps on half the batch
    (TorchRec averages the table's gradient as DDP does the rest's, and the loop
    weights the losses for that); row-wise, neither rank holds the whole table."""
    spawn_gloo(_lookup_worker, tmp_path, sharding)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["same_vectors"] and r["same_ranks"], r
        assert r["users"] > 400  # each rank ranked about half the 943 users
        # float32 sums in another order: equal to 1e-5 of the step
        assert r["table_error"] < 1e-5 * r["table_step"], r
        assert r["dense_error"] < 1e-5 * r["dense_step"], r
        assert r["table_step"] > 1e-3 and r["dense_step"] > 1e-3
    catalog = ranks[0]["catalog_rows"]
    rows = [r["rows"] for r in ranks]
    assert sum(rows) == catalog
    if sharding == "row_wise":  # neither rank holds the whole table
        assert max(rows) < catalog and min(rows) > 0
        assert max(r["mib"] for r in ranks) < catalog * 16 * 4 / 2**20
    else:  # table-wise places the one table on one rank
        assert sorted(rows) == [0, catalog]


def _training_worker(rank: int, out: Path) -> None:
    """Two epochs straight into ``run``; one, a stop and a resume to two into ``resumed``
    (past the parts an interrupted save of epoch 2 left behind)."""
    from modrec.train import train

    def config(epochs: int) -> Any:
        return build_config("ml-100k", "sasrec", overrides=[*SMALL, f"train.epochs={epochs}"])

    train(config(2), out / "run", progress=False)
    train(config(1), out / "resumed", progress=False)
    if rank == 0:  # what a kill while epoch 2's checkpoint was saved would leave behind:
        # rank 1's part written, rank 0's a temporary file, checkpoint.pt still at epoch 1
        torn = out / "resumed" / "checkpoint_table" / "000002"
        torn.mkdir(parents=True)
        (torn / "rank00001.pt").write_bytes(b"torn")
        (torn / ".rank00000.pt.tmp").write_bytes(b"torn")
    torch.distributed.barrier()
    train(config(2), out / "resumed", resume=True, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runs of `_training_worker`, made once for the tests that read them."""
    pytest.importorskip("torchrec")
    out = tmp_path_factory.mktemp("sharded-runs")
    spawn_gloo(_training_worker, out)
    return out


def test_a_sharded_run_trains_evaluates_and_loads_on_one_process(trained: Path) -> None:
    from modrec.runs import load_run

    folder = trained / "run"
    results = json.loads((folder / "results.json").read_text())
    assert results["epochs"] == 2 and 0 < results["ndcg@10"] < 1
    parts = sorted((folder / "item_table").glob("*.pt"))
    assert len(parts) == 2  # one part per rank, each written by its rank
    # One process reads the parts back whole (as serving does) and scores alike.
    run = load_run(folder)
    assert run.item_vectors().shape == (run.dataset.num_items + 1, 16)
    again = run.evaluate(run.split.test)
    assert again["ndcg@10"] == pytest.approx(results["ndcg@10"], abs=1e-6)


def _close(a: Any, b: Any, where: str) -> None:
    """Equal tensors (to float tolerance) in equal containers."""
    if isinstance(a, torch.Tensor):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{k}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7), where
    else:
        assert a == b, where


def test_a_sharded_run_resumes_as_if_it_had_not_stopped(trained: Path) -> None:
    """Two ranks: two epochs straight, or one, a stop and a resume to two (past the parts
    an interrupted save of epoch 2 left): the same table rows and Adagrad state, dense
    weights and AdamW moments, metrics and test results. One process may not resume it."""
    from modrec.runs import load_tensors
    from modrec.train import setup

    straight, resumed = trained / "run", trained / "resumed"
    for name in ("rank00000.pt", "rank00001.pt"):  # each rank's rows and their state
        parts = [load_tensors(run / "checkpoint_table" / "000002" / name)
                 for run in (straight, resumed)]
        _close(parts[0], parts[1], name)
        assert [name for name, _, _ in parts[0]["optimizer"]] == [
            "model.encoder.item_tower.embedding.collection.embeddings.item_ids.weight"
            "/item_ids.momentum1"]
        assert parts[0]["optimizer"][0][2].abs().max() > 0  # Adagrad has accumulated
    for run in (straight, resumed):
        assert [p.name for p in (run / "checkpoint_table").iterdir()] == ["000002"]
    saved = [load_tensors(run / "checkpoint.pt") for run in (straight, resumed)]
    assert saved[0]["table_parts"] == {"epoch": 2, "world_size": 2}
    _close(saved[0]["model"], saved[1]["model"], "dense weights")
    _close(saved[0]["optimizer"], saved[1]["optimizer"], "AdamW")
    _close(saved[0]["rank_rngs"], saved[1]["rank_rngs"], "random streams")
    for name in ("model.pt", "item_table/000000000000.pt"):  # the best weights
        _close(load_tensors(straight / name), load_tensors(resumed / name), name)
    records = [[json.loads(line) for line in (run / "metrics.jsonl").open()]
               for run in (straight, resumed)]
    assert [r["epoch"] for r in records[1]] == [1, 2]
    for a, b in zip(*records, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        _close(a["valid"], b["valid"], f"epoch {a['epoch']} validation")
    results = [json.loads((run / "results.json").read_text()) for run in (straight, resumed)]
    for key in ("ndcg@10", "hr@10", "mrr", "best_epoch", "epochs"):
        _close(results[0][key], results[1][key], key)
    # One process cannot take over two ranks' parts, and says so before touching the run.
    before = (resumed / "checkpoint.pt").read_bytes()
    config = build_config("ml-100k", "sasrec", overrides=[*SMALL, "train.epochs=3"])
    with pytest.raises(ValueError, match=r"written by 2 processes and this run has 1.*"
                                         r"--nproc_per_node 2"):
        setup(config, resumed, resume=True, show_progress=False)
    assert (resumed / "checkpoint.pt").read_bytes() == before


def test_a_sharded_table_refuses_what_needs_the_whole_table(
        torchrec: Any, tmp_path: Path) -> None:
    from modrec.train import setup

    for override, says in (("loss.name=softmax", "sampled_softmax"),
                           ("model.dim=50", "multiple of 4"),
                           ("train.ema_decay=0.99", "ema_decay")):
        config = build_config("ml-100k", "sasrec", overrides=[*SMALL, override])
        with pytest.raises(ValueError, match=says):
            setup(config, tmp_path / "run", show_progress=False)


def test_without_torchrec_the_error_names_the_install_steps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from modrec.models import build_model

    monkeypatch.setitem(sys.modules, "torchrec", None)  # import torchrec now fails
    config = build_config("ml-100k", "sasrec", overrides=SMALL)
    with pytest.raises(ImportError, match=r"fbgemm-gpu-cpu==1\.8\.0.*--no-deps torchrec"):
        build_model(config.model, 100)


def test_old_configs_keep_a_local_table() -> None:
    config = build_config("ml-100k", "sasrec")
    assert config.model.item_table == "local"
    assert config.model.to_dict()["item_table"] == "local"


def test_the_benchmark_writes_its_section_into_a_new_scaling_page(
        torchrec: Any, tmp_path: Path) -> None:
    import subprocess

    doc = tmp_path / "scaling.md"
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "sharded_table.py"
    subprocess.run([sys.executable, str(script), "--items", "2000", "--steps", "12",
                    "--eval-users", "8", "--doc", str(doc)], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = doc.read_text()
    assert text.startswith("# Scaling")
    assert "--items 2000 --dim 64 --steps 12" in text
    assert "| 0 | 2,001 |" in text  # one process holds every row of a world of one


def test_the_cli_says_what_to_install_without_torchrec(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from modrec.cli import main

    monkeypatch.setitem(sys.modules, "torchrec", None)
    code = main(["train", "-d", "ml-100k", "-m", "sasrec", "--set", "model.item_table=sharded",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install --no-deps torchrec==1.8.0" in err, err
    assert not (tmp_path / "run").exists()  # nothing half-made

