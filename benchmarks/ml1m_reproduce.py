"""Train the foundation models on MovieLens-1M to early stopping with their published
settings (configs/ml-1m/*.yaml) and write the test table and learning curves into
docs/benchmarks.md.

    python benchmarks/ml1m_reproduce.py [--models popularity,sasrec,gru4rec]

Each model runs exactly ``modrec train -d ml-1m -m MODEL --out runs/bench/ml-1m-MODEL``;
a finished run directory is reused (delete it to retrain), an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from report import DOC, machine, markdown_table, write_section  # noqa: E402

from modrec.train import build_config, train  # noqa: E402

PUBLISHED = {  # HSTU repository README, ML-1M, HR@10 / NDCG@10 / HR@50 / NDCG@50
    "sasrec": (0.2853, 0.1603, 0.5474, 0.2185),
    "gru4rec": (0.2811, 0.1648, None, None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="popularity,sasrec,gru4rec")
    parser.add_argument("--runs", default="runs/bench")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    rows, curves = [], {}
    for model in args.models.split(","):
        out = Path(args.runs) / f"ml-1m-{model}"
        if not (out / "results.json").exists():
            train(build_config("ml-1m", model), out, resume=True)
        r = json.loads((out / "results.json").read_text())
        pub = PUBLISHED.get(model)
        rows.append([model, r["hr@10"], r["ndcg@10"], r["hr@50"], r["ndcg@50"], r["hr@200"],
                     r["ndcg@200"], r["mrr"], r["best_epoch"], r["epochs"],
                     f"{r['train_seconds'] / 60:.1f}",
                     "–" if pub is None else f"{pub[0]:.4f} / {pub[1]:.4f}"])
        if (out / "metrics.jsonl").exists():
            records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            curves[model] = [(x.get("train_seconds", 0) / 60, x["valid"]["ndcg@10"])
                             for x in records if "valid" in x]

    chart = DOC.parent / "ml1m_foundation_curves.png"
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for model, points in curves.items():
        if len(points) > 1:
            ax.plot(*zip(*points, strict=True), label=model)
    ax.set_xlabel("training time (minutes, this machine)")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title("MovieLens-1M, full ranking, history masked")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(chart, dpi=120)

    table = markdown_table(
        ["model", "HR@10", "NDCG@10", "HR@50", "NDCG@50", "HR@200", "NDCG@200", "MRR",
         "best epoch", "epochs", "train min", "published HR@10 / NDCG@10"], rows)
    write_section("ml1m-foundation", f"""
## MovieLens-1M: foundation models to early stopping

Command: `python benchmarks/ml1m_reproduce.py --models {args.models}` (each row is
`modrec train -d ml-1m -m MODEL`, settings in `configs/ml-1m/MODEL.yaml`). Test split,
leave-one-out, full ranking over all 3,706 items with the user's history masked,
metrics at the epoch with the best validation NDCG@10 (selected on validation, never
on test). Machine: {machine()}.

{table}

Published numbers: the HSTU repository's README (same protocol, no validation split).

![validation NDCG@10 against training time]({chart.name})
""")


if __name__ == "__main__":
    main()
