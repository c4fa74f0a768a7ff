"""RecBole 1.2.1's SASRec beside ours on the same ML-1M file, in one run, written into
docs/benchmarks.md.

    python -m venv .venv-peer && .venv-peer/bin/pip install torch==2.13.0 recbole==1.2.1 -e .
    .venv-peer/bin/pip install 'numpy<2' 'pandas<3' 'scipy<1.15' 'scikit-learn<1.6' 'pyarrow<20'
    .venv-peer/bin/python benchmarks/peer_recbole.py [--budget-minutes 10]

RecBole is a benchmark-only peer: it is installed in its own environment, never as a
dependency of modrec. Each side gets the same wall-clock training budget on the same
leave-one-out split of `ml1m_user_sequences_origids.txt` (the last item is test, the one
before it validation):

* RecBole: its default sequential setting (every prefix of a history is a training
  example, full-softmax cross-entropy), SASRec with max length 200, dim 50, 2 blocks,
  1 head, feed-forward width 50, dropout 0.2, batch 128, Adam lr 1e-3. An epoch is far
  longer than the budget, so seconds per epoch are extrapolated from the batches done.
* modrec: `modrec train -d ml-1m -m sasrec` (configs/ml-1m/sasrec.yaml), whole epochs
  until the budget is spent.

Reported for each: seconds per training epoch, validation NDCG@10 when the budget ends
(full ranking over all items, history masked on our side; RecBole's full-sort
evaluation masks the history too), for modrec the training time until validation
NDCG@10 first reaches 0.15 (validated after every epoch, evaluation not counted), and
seconds to evaluate all 6,040 users on test. Run it on an otherwise idle machine.

The two sides run one after the other, each in a fresh child process: measured in the
process RecBole had just used, our epochs took 15.4 s instead of 10.3 s (its large heap
and allocator state stay behind), which would have measured RecBole's leftovers, not us.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import contextlib
import math
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
from kit import machine, markdown_table, session_for, write_section

from modrec.data import load_dataset
from modrec.eval import evaluate, rank_targets
from modrec.train import train_epoch

TARGET = 0.15  # issue 3: validation NDCG@10 within the training budget


def write_atomic_inter(folder: Path) -> None:
    """ML-1M as a RecBole ``.inter`` file; the position in each history is its time."""
    ds = load_dataset("ml-1m")
    seqs = ds.sequences()
    users = np.repeat(ds.users["user_id"].to_numpy(), seqs.lengths())
    items = ds.items["item_id"].to_numpy()[seqs.items - 1]
    order = np.arange(len(items)) - np.repeat(seqs.offsets[:-1], seqs.lengths())
    (folder / "ml-1m").mkdir(parents=True)
    with (folder / "ml-1m" / "ml-1m.inter").open("w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, i, t in zip(users, items, order, strict=True):
            f.write(f"{u}\t{i}\t{t}\n")


def run_recbole(budget: float) -> dict[str, object]:
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    folder = Path(tempfile.mkdtemp(prefix="recbole-"))
    write_atomic_inter(folder)
    config = Config(model="SASRec", dataset="ml-1m", config_dict={
        "data_path": str(folder), "checkpoint_dir": str(folder / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 200, "n_layers": 2, "n_heads": 1, "hidden_size": 50,
        "inner_size": 50, "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2,
        "loss_type": "CE", "train_neg_sample_args": None, "train_batch_size": 128,
        "eval_batch_size": 256, "learning_rate": 1e-3, "device": "cpu", "use_gpu": False,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full",
                      "group_by": "user"},
        "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10",
        "show_progress": False, "seed": 0})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset).to("cpu")
    # RecBole's Trainer opens TensorBoard logs under the working directory: keep them
    # in the temporary folder, not in the checkout.
    with contextlib.chdir(folder):
        trainer = Trainer(config, model)
    model.train()
    batches, started = 0, time.perf_counter()
    for interaction in train_data:
        trainer.optimizer.zero_grad()
        model.calculate_loss(interaction.to("cpu")).backward()
        trainer.optimizer.step()
        batches += 1
        if time.perf_counter() - started >= budget:
            break
    seconds = time.perf_counter() - started
    valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    started = time.perf_counter()
    trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    eval_seconds = time.perf_counter() - started
    per_epoch = len(train_data)
    return {"name": "RecBole 1.2.1 SASRec (all prefixes, full softmax)",
            "epoch_seconds": seconds / batches * per_epoch,
            "epoch_note": f"extrapolated from {batches} of {per_epoch} batches",
            "valid_ndcg@10": float(valid["ndcg@10"]), "eval_seconds": eval_seconds,
            "trained": f"{batches} batches ({batches / per_epoch:.2f} epoch)"}


def run_modrec(budget: float) -> dict[str, object]:
    # `modrec train -d ml-1m -m sasrec`'s own set-up and epochs, validated after each
    # (not timed) until the budget is spent.
    session = session_for("ml-1m", "sasrec")
    max_len = session.config.model.max_len
    spent, epochs, valid, reached = 0.0, 0, math.nan, None
    while spent < budget:
        spent += train_epoch(session)["epoch_seconds"]
        epochs += 1
        valid = evaluate(session.scorer, session.split.valid, max_len)["ndcg@10"]
        if reached is None and valid >= TARGET:
            reached = f"{spent / 60:.1f} min (epoch {epochs})"
    started = time.perf_counter()
    rank_targets(session.scorer, session.split.test, max_len)
    return {"name": "modrec SASRec (configs/ml-1m/sasrec.yaml)",
            "epoch_seconds": spent / epochs, "epoch_note": f"mean of {epochs} whole epochs",
            "valid_ndcg@10": valid, "eval_seconds": time.perf_counter() - started,
            "trained": f"{epochs} epochs", "reached": reached or "not reached"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args()
    budget = args.budget_minutes * 60
    rows = []
    for run in (run_recbole, run_modrec):
        with multiprocessing.get_context("spawn").Pool(1) as child:
            result = child.apply(run, (budget,))
        print(result, flush=True)
        rows.append([result["name"], f"{result['epoch_seconds']:.1f}", result["epoch_note"],
                     result["trained"], f"{result['valid_ndcg@10']:.4f}",
                     result.get("reached", "not reached"), f"{result['eval_seconds']:.1f}"])
    ratio = float(rows[0][1]) / float(rows[1][1])
    body = "\n".join([
        "### Peer: RecBole 1.2.1 SASRec vs modrec SASRec on ML-1M",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, each side in a fresh "
        f"process, with "
        f"`python benchmarks/peer_recbole.py --budget-minutes {args.budget_minutes:g}`; "
        f"the same {args.budget_minutes:g}-minute training budget each.",
        "",
        markdown_table(["system", "s / epoch", "how", f"trained in {args.budget_minutes:g} min",
                        "valid NDCG@10 at budget", f"training to valid NDCG@10 ≥ {TARGET}",
                        "evaluate 6,040 users (s)"], rows),
        "",
        f"modrec's epoch is {ratio:.0f}x shorter: RecBole trains on every prefix of every "
        "history (7,673 batches of 128 prefixes) with a full softmax, where one causal pass "
        "over a history supervises all of its positions at once.",
    ])
    write_section(Path(args.doc), "peer-recbole", body)
    print(body)


if __name__ == "__main__":
    main()
