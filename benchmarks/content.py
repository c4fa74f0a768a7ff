"""Content classification and text search, written into docs/benchmarks.md.

    python benchmarks/content.py [--run runs/bench/ml-1m-sasrec]

* ML-1M genres (18 labels, a seeded 20% of movies held out) from TMDB text (title,
  overview, director, actors), TMDB's own genre tags, and, when ``--run`` names a
  finished ML-1M run, the item vectors it learned from interactions; trained (linear and
  MLP), zero-shot and retrieval-augmented (k-NN) modes.
* Last.fm artist tags (the 50 most frequent) from the precomputed VGGish and Whisper
  audio vectors.
* Text search on ML-1M: every genre is a query, relevant movies are those carrying it,
  mAP over the full catalog ranking.

Each row is a `modrec classify` / `modrec search` command, printed beside the table.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import time
from pathlib import Path

from kit import machine, markdown_table, write_section

from modrec.content import EmbeddingStore, embed
from modrec.content.classify import classify
from modrec.content.search import search_map
from modrec.content.store import store_name
from modrec.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/bench/ml-1m-sasrec",
                        help="an ML-1M run whose item vectors join as a feature (if present)")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args()

    ml1m = load_dataset("ml-1m")
    ml1m_specs = ["text", "tags:tmdb_genres"]
    run_spec = f"run:{args.run}"
    if (Path(args.run) / "model.pt").exists():
        ml1m_specs.append(run_spec)
    ml1m_store = EmbeddingStore.for_dataset(ml1m)
    embed(ml1m, ml1m_specs, ml1m_store)
    lastfm = load_dataset("lastfm-2k")
    lastfm_store = EmbeddingStore.for_dataset(lastfm)
    embed(lastfm, ["vggish", "whisper"], lastfm_store)

    text, tmdb, behaviour = "text", store_name("tags:tmdb_genres"), store_name(run_spec)
    cases = [  # dataset, labels, encoders, mode, head, template
        (ml1m, "genres", [text], "zero-shot", None, "a {label} movie"),
        (ml1m, "genres", [text], "knn", None, None),
        (ml1m, "genres", [text], "trained", "linear", None),
        (ml1m, "genres", [text], "trained", "mlp", None),
        (ml1m, "genres", [text, tmdb], "knn", None, None),
        (ml1m, "genres", [text, tmdb], "trained", "mlp", None),
    ]
    if run_spec in ml1m_specs:
        cases += [(ml1m, "genres", [behaviour], "trained", "mlp", None),
                  (ml1m, "genres", [text, tmdb, behaviour], "trained", "mlp", None)]
    cases += [
        (lastfm, "tags", ["vggish"], "knn", None, None),
        (lastfm, "tags", ["vggish"], "trained", "mlp", None),
        (lastfm, "tags", ["whisper"], "trained", "mlp", None),
        (lastfm, "tags", ["vggish", "whisper"], "trained", "mlp", None),
    ]
    rows, commands = [], []
    for dataset, labels, encoders, mode, head, template in cases:
        store = ml1m_store if dataset is ml1m else lastfm_store
        started = time.perf_counter()
        r = classify(dataset, labels, encoders, mode, store, head=head or "mlp",
                     template=template or "{label}")
        rows.append([dataset.name, labels, " + ".join(encoders),
                     mode + (f" ({head})" if head else ""), r["labels"], r["micro_f1"],
                     r["macro_f1"], r["map"], f"{time.perf_counter() - started:.1f}"])
        extra = (f" --head {head}" if head else "") + (f" --template '{template}'"
                                                        if template else "")
        commands.append(f"modrec classify -d {dataset.name} --labels {labels} --encoder "
                        f"{','.join(encoders)} --mode {mode}{extra}")

    # Last.fm has no item text besides the tags themselves, so search is measured on ML-1M.
    searches = [(ml1m, ml1m_store, "genres", "a {label} movie"),
                (ml1m, ml1m_store, "genres", "{label}")]
    search_rows = []
    for dataset, store, field, template in searches:
        r = search_map(dataset, field, template, store)
        search_rows.append([dataset.name, field, f"`{template}`", r["queries"], r["map"]])
        commands.append(f"modrec search -d {dataset.name} --labels {field} "
                        f"--template '{template}'")

    body = "\n".join([
        "### Content classification (multi-label, held-out items)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()} with "
        "`python benchmarks/content.py`. A seeded 20% of labelled items is held out; 10% of "
        "the rest chooses the early-stopping epoch and the decision threshold. Embeddings "
        "are L2-normalised per encoder and concatenated. Last.fm `text` is not used for "
        "tags: it is the tag list itself.",
        "",
        markdown_table(["dataset", "labels", "inputs", "mode", "labels kept", "micro-F1",
                        "macro-F1", "mAP", "seconds"], rows),
        "",
        "### Text search (each genre a query; relevant = movies carrying it)",
        "",
        markdown_table(["dataset", "field", "query template", "queries", "mAP"], search_rows),
        "",
        "Commands (one per row, in order):",
        "",
        "```",
        *commands,
        "```",
    ])
    write_section(Path(args.doc), "content", body)
    print(body)


if __name__ == "__main__":
    main()
