"""A real-text corpus available offline: the sentences of this machine's English man pages.

    python benchmarks/man_sentences.py OUT.txt [--limit 1000000] [--sample N]

Reads the roff sources under /usr/share/man/man*/ (the English pages; the translated
ones under /usr/share/man/<lang>/ are left out), drops the roff requests and font escapes,
splits the running text into sentences and writes the distinct ones of 5 to 60 words, one
per line, in a fixed order (so the same machine gives the same file); ``--sample N``
keeps N of them drawn at random (seed 0), for a corpus that can be encoded in minutes
(all-MiniLM-L6-v2 ran about 22 sentences/s on 2 busy cores, niced). Used by
``benchmarks/ann_recall.py --vectors text:OUT.txt`` as sentence embeddings of real text.
"""

from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

import numpy as np

MAN = Path("/usr/share/man")
ESCAPES = re.compile(r"\\f[BIRP]|\\f\(..|\\f\[[^]]*\]|\\s[-+]?\d|\\\(..|\\\[[^]]*\]|\\[&|^%e-]")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def page_text(path: Path) -> str:
    """The running text of one page: roff requests dropped, escapes removed."""
    raw = gzip.open(path, "rt", errors="replace").read() if path.suffix == ".gz" \
        else path.read_text(errors="replace")
    lines = []
    for line in raw.splitlines():
        if line.startswith((".", "'")):
            if line[:3] in (".B ", ".I ") or line.startswith((".BR ", ".IR ", ".BI ")):
                line = line.split(" ", 1)[1].replace('"', "")
            else:
                lines.append("\n")  # a request ends a paragraph's run of text
                continue
        lines.append(ESCAPES.sub("", line).replace("\\", ""))
    return " ".join(lines)


def sentences(text: str) -> list[str]:
    out = []
    for para in text.split("\n"):
        for s in SENTENCE_END.split(" ".join(para.split())):
            if 5 <= len(s.split()) <= 60 and s[0].isalpha():
                out.append(s)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=None)
    args = parser.parse_args()
    seen: dict[str, None] = {}
    pages = sorted(p for p in MAN.glob("man*/*") if p.is_file())
    for path in pages:
        for s in sentences(page_text(path)):
            seen.setdefault(s)
        if len(seen) >= args.limit:
            break
    found = list(seen)[:args.limit]
    if args.sample is not None and args.sample < len(found):
        keep = np.sort(np.random.default_rng(0).choice(len(found), args.sample, replace=False))
        found = [found[i] for i in keep]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(found) + "\n")
    print(f"{len(found)} sentences from {len(pages)} pages -> {args.out}")


if __name__ == "__main__":
    main()
