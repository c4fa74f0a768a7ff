"""``modrec <verb>``: argument parsing only; each verb calls one public function.

One module per verb group, each verb's parser beside its handler: `data` (datasets),
`train` (train, refit), `runs` (evaluate, recommend, export), `serve`, `content`
(embed, transcribe), `language` (annotate, classify, search); `common` holds the
options several verbs share and the error handling.

Every verb that reports numbers accepts ``--json`` and then prints them as one JSON
object on the last line of standard output (progress and logs go to standard error).

Misuse is answered with one message naming the problem and exit status 2 (argparse's
own usage errors included), never a traceback: what the user can fix is a
`modrec.errors.ModrecError` (or the world's ``OSError``, or a missing optional package's
``ImportError``). Any other exception is a bug: it is named in one line with exit
status 1, and ``-v`` shows its traceback. A command that fails removes the run folder
or store it had just created when nothing in it is worth keeping (a run keeps its
checkpoint, to be continued with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from modrec.cli import content, data, language, runs, serve, train
from modrec.cli.common import json_safe, log, output_arguments, report_error
from modrec.threads import apply_threads

__all__ = ["build_parser", "main"]

VERB_GROUPS = (data, train, runs, serve, content, language)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modrec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True)
    for group in VERB_GROUPS:
        group.add_parsers(sub)
    for verb in sub.choices.values():
        output_arguments(verb)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error argparse has printed
        return stop.code if isinstance(stop.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:  # FAISS logs which CPU builds it could not load, as exceptions
        logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        # llama.cpp's and Whisper's --threads (annotate, transcribe...) bound torch too
        threads = apply_threads(getattr(args, "threads", None), serving=args.verb == "serve")
        log.debug("torch computes with %d threads", threads)
        result = args.func(args)
        # strict JSON: no NaN or Infinity, which many parsers reject
        text = json.dumps(json_safe(result), default=str, allow_nan=False) if args.json else ""
    except KeyboardInterrupt:
        print(f"modrec {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the user's (exit 2) or a bug (exit 1)
        return report_error(args.verb, err, args.verbose)
    if args.json and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone
        print(text)
    return 0
