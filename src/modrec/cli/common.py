"""What the verbs share: argument types, the options several verbs take (each defined
here once), the dataset argument, folder clean-up on failure, and how an error becomes
one message and an exit status."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import re
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

from modrec.errors import ModrecError, UsageError

log = logging.getLogger("modrec")

# What `build_parser` hands each verb module's ``add_parsers``: ``sub.add_parser(...)``.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# What the user can fix, so that the message is for them (exit 2): modrec's own errors
# (misuse, bad settings, damaged folders: `modrec.errors`), argparse's, the world's
# (missing files, permissions, full disks) and an optional package not installed (such
# as TorchRec for a sharded item table). Anything else, a bare ValueError, KeyError or
# RuntimeError included, is a bug in modrec (exit 1).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ModrecError, argparse.ArgumentError, argparse.ArgumentTypeError, OSError, ImportError)


# ---- argument types --------------------------------------------------------------------
def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def port(text: str) -> int:
    value = at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is at most 65535, got {value}")
    return value


def milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


def template(text: str) -> str:
    """An argparse type: text that names no field but ``{label}``."""
    try:
        text.format(label="label")
    except (KeyError, IndexError, ValueError) as err:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a template of {{label}} ({type(err).__name__}: {err}); write "
            "e.g. 'a {label} movie', with {{ and }} for literal braces") from None
    return text


def device(text: str) -> str:
    """An argparse type: a torch device this machine has (cpu, cuda, cuda:N, mps), checked
    before any work, so that a missing GPU is named at once, not deep inside an encoder."""
    form = re.fullmatch(r"cpu|mps|cuda(?::(\d+))?", text)
    if form is None:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected cpu, cuda, "
                                         "cuda:N (the N-th GPU) or mps")
    if text == "cpu":
        return text
    import torch

    if text == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(
                "mps: no Apple GPU here (MPS needs macOS on Apple silicon); use cpu or cuda")
        return text
    if torch.version.cuda is None and torch.version.hip is None:
        raise argparse.ArgumentTypeError(
            f"{text}: this torch build ({torch.__version__}) has no CUDA support; install a "
            "CUDA build of PyTorch (https://pytorch.org/get-started/locally/ gives the pip "
            "command for your CUDA version), or use --device cpu")
    count = torch.cuda.device_count()
    if count == 0:
        raise argparse.ArgumentTypeError(
            f"{text}: torch {torch.__version__} has CUDA support but sees no GPU (check the "
            "driver with nvidia-smi, and CUDA_VISIBLE_DEVICES), or use --device cpu")
    if form.group(1) is not None and int(form.group(1)) >= count:
        raise argparse.ArgumentTypeError(
            f"{text}: {count} GPU{'s' if count > 1 else ''} visible here (cuda:0 to "
            f"cuda:{count - 1})")
    return text


# ---- options several verbs take --------------------------------------------------------
def dataset_arguments(p: argparse.ArgumentParser, required: bool = True,
                      help: str = "named dataset or path to a file/folder",
                      formats: bool = True) -> None:
    """``-d/--dataset``, and with ``formats`` the ``--format`` and ``--columns`` that say
    how to read a path (`dataset_source`, `columns`)."""
    p.add_argument("-d", "--dataset", required=required, help=help)
    if not formats:
        return
    p.add_argument("--format", help="importer format of a path: sequences, pairs, recbole, "
                   "csv, csv-large (DuckDB, out of core), parquet, parquet-large (DuckDB; "
                   "a file or a folder of them), movielens, video-folder (ROOT/CLASS/"
                   "clip.mp4), video-csv (path,label[,group]); the -large ones are chosen "
                   "by themselves from 1 GiB")
    p.add_argument("--columns", metavar="ROLE=COLUMN,...",
                   help="which columns of a table hold the user, item, timestamp and rating, "
                   "when their names are not recognised: user=uid,item=iid,timestamp=ts")


def store_argument(p: argparse.ArgumentParser, more: str = "") -> None:
    p.add_argument("--store", help="store folder (default $MODREC_EMBEDDINGS_DIR/<dataset>)"
                   + more)


def device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or mps")


def outside_paths_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="read media files wherever the catalog's paths lead (by default only "
                   "inside the catalog's own folder; relative paths start there)")


def no_progress_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def threads_argument(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--threads``: torch's CPU threads, unless ``help`` says whose they are (llama.cpp's,
    Whisper's); `main` bounds torch by them either way."""
    p.add_argument("--threads", type=at_least(1), help=help or (
        "torch's CPU threads: default 1 for serve (a worker per core scales better), else "
        "the cores this process may use; MODREC_THREADS sets the default (see "
        "modrec.threads)"))


def output_arguments(p: argparse.ArgumentParser) -> None:
    """``--json`` and ``-v``, which every verb takes last."""
    p.add_argument("--json", action="store_true",
                   help="print the results as one JSON object on the last line")
    # -v after the verb too; SUPPRESS keeps `modrec -v VERB` from being reset
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging, and the traceback of an error")


# ---- values of the options -------------------------------------------------------------
def dataset_source(text: str, format: str | None = None) -> str:
    """A named dataset as given; a path made absolute (so that a run records where its
    data was, whatever the directory it is later resumed or refitted from); anything
    else refused with the directory a relative path was looked for in."""
    from modrec.data import NAMED, named_dataset
    from modrec.data.state_schema import is_postgres_url

    if named_dataset(text, format) is not None or is_postgres_url(text):
        return text  # a service's PostgreSQL state is read as it is (format modrec-state)
    path = Path(text).expanduser()
    if path.exists():
        return str(path.resolve())
    where = "" if path.is_absolute() else f" (relative paths start from {Path.cwd()})"
    raise UsageError(f"{text!r} is neither a named dataset ({', '.join(NAMED)}) nor an "
                     f"existing path{where}; `modrec datasets` lists the named ones")


def media_root(source: str, format: str | None) -> Path | None:
    """The folder a catalog's media paths start from: None for a named dataset (its
    media live in the data directory), or for a PostgreSQL state (no folder), else the
    catalog file's folder."""
    from modrec.data import named_dataset
    from modrec.data.state_schema import is_postgres_url

    if named_dataset(source, format) is not None or is_postgres_url(source):
        return None
    return Path(source) if Path(source).is_dir() else Path(source).parent


def columns(text: str | None) -> dict[str, str] | None:
    """``--columns user=uid,item=iid`` as {role: column}."""
    if not text:
        return None
    pairs = [p.split("=", 1) for p in text.split(",")]
    if any(len(p) != 2 for p in pairs):
        raise UsageError(f"--columns {text!r}: expected role=column pairs, e.g. "
                         "user=uid,item=iid")
    return {role.strip(): column.strip() for role, column in pairs}


# ---- folders and output ----------------------------------------------------------------
@contextlib.contextmanager
def removed_on_failure(folder: Path, worth_keeping: Callable[[Path], bool],
                       how_to_continue: str) -> Iterator[None]:
    """If the command fails, remove ``folder`` when this command created it and it
    holds nothing ``worth_keeping``: a failed command leaves no half-made folder."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir():
            if worth_keeping(folder):
                log.warning("%s keeps what was done before the failure; %s", folder,
                            how_to_continue)
            else:
                shutil.rmtree(folder, ignore_errors=True)
        raise


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    keys = [k for k in metrics if "@" in k or k == "mrr"]
    print(title)
    print("  " + "  ".join(f"{k:>9}" for k in keys))
    print("  " + "  ".join(f"{metrics[k]:>9.4f}" for k in keys))


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# ---- errors ----------------------------------------------------------------------------
def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's (or the world's) to fix rather than a bug: one of
    `USER_ERRORS`, or a GPU out of memory (torch's OutOfMemoryError, a RuntimeError:
    a smaller batch or model fits)."""
    torch = sys.modules.get("torch")
    return isinstance(err, USER_ERRORS) or (
        torch is not None and isinstance(err, torch.OutOfMemoryError))


def report_error(verb: str, err: Exception, verbose: bool) -> int:
    """Print ``err`` as one line on standard error (and its traceback with ``verbose``);
    the exit status: 2 for the user's error, 1 for a bug."""
    if is_user_error(err):
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"modrec {verb}: error: {message}", file=sys.stderr)
        status = 2
    else:
        print(f"modrec {verb}: internal error: {type(err).__name__}: {err}"
              + ("" if verbose else " (run with -v for the traceback)"), file=sys.stderr)
        status = 1
    if verbose:
        traceback.print_exc()
    return status
