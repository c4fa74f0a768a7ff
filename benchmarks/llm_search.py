"""Text search on ML-1M with and without a language model regrading the top of each
result list; written into docs/llm.md.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/llm_search.py [--threads 1] [--top 50]

Every genre is a query ("a comedy movie"); an item is relevant when it carries the
genre. MiniLM retrieves; the language model (the bundled Qwen 1.5B, see
llm_labels.py) grades the top ``--top`` items of each query 0-3 (the expected grade
under the probabilities of "0".."3") and they are reordered by grade, staying above
the rest. Reported: mAP over the whole catalog (the number `modrec search --labels`
prints, which a reordering of the top 50 can only move so far: most genres have
hundreds of relevant movies) and precision@10 (what a user sees first). Grades are
cached in the dataset's annotation files; a rerun asks nothing again.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import os
import time
from pathlib import Path

from kit import cpu_name, markdown_table, write_section
from llm_labels import bundled_qwen

from modrec.content import EmbeddingStore, embed
from modrec.content.search import search_map
from modrec.data import load_dataset
from modrec.llm import open_llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF file (default: the bundled Qwen 1.5B)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=50, help="items regraded per query")
    parser.add_argument("--template", default="a {label} movie")
    parser.add_argument("--doc", default="docs/llm.md")
    args = parser.parse_args()

    model_path = Path(args.model) if args.model else bundled_qwen()
    dataset = load_dataset("ml-1m")
    store = EmbeddingStore.for_dataset(dataset)
    embed(dataset, ["text"], store)
    load = [os.getloadavg()[0]]

    plain = search_map(dataset, "genres", args.template, store)
    llm = open_llm(f"local:{model_path}", threads=args.threads)
    started = time.perf_counter()
    before = dict(llm.stats)  # type: ignore[attr-defined]
    reranked = search_map(dataset, "genres", args.template, store, llm=llm,
                          rerank_top=args.top, noun="movie")
    seconds = time.perf_counter() - started
    load.append(os.getloadavg()[0])
    asked = llm.stats["prompt_tokens"] > before["prompt_tokens"]  # type: ignore[attr-defined]
    pairs = plain["queries"] * args.top
    speed = f"{pairs / seconds:.2f} pairs/s" if asked else "cached"

    rows = [[f"MiniLM text (`{args.template}`)", plain["queries"], plain["map"],
             plain["precision_at_10"], ""],
            [f"+ {model_path.stem} regrading the top {args.top}", reranked["queries"],
             reranked["map"], reranked["precision_at_10"], speed]]
    per_label = [[label, round(plain["ap"][label], 4), round(reranked["ap"][label], 4)]
                 for label in plain["ap"]]
    command = (f"modrec search -d ml-1m --labels genres --template '{args.template}'")
    body = "\n".join([
        f"### Search with language-model reranking (ML-1M, {plain['queries']} genre queries)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()} with `OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')} python benchmarks/llm_search.py "
        f"--threads {args.threads} --top {args.top}`; llama.cpp with {args.threads} "
        f"thread(s), load average {min(load):.1f}-{max(load):.1f}. mAP is over the whole "
        "catalog; precision@10 is the share of the genre among each query's first 10.",
        "",
        markdown_table(["retrieval", "queries", "mAP", "precision@10", "speed"], rows),
        "",
        "```",
        command,
        f"{command} --rerank llm --rerank-top {args.top} --llm local:{model_path} "
        f"--noun movie --threads {args.threads}",
        "```",
        "",
        "<details><summary>AP per genre query</summary>",
        "",
        markdown_table(["genre", "MiniLM", "reranked"], per_label),
        "",
        "</details>",
    ])
    write_section(Path(args.doc), "llm-search", body)
    print(body)


if __name__ == "__main__":
    main()
