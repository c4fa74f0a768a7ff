"""Importers: one function per source format, each returning a canonical `Dataset`.

Formats:
  ``sequences``  text, one user per line: ``user item item ...`` (chronological)
  ``pairs``      text, one interaction per line: ``user item [timestamp]``
  ``recbole``    RecBole atomic files (``.inter`` with ``name:type`` headers, optional
                 ``.item``/``.user``; also pre-split ``X.train/valid/test.inter``)
  ``csv`` / ``parquet``  a table with a column mapping (user, item, [timestamp], [weight])
  ``movielens``  the original GroupLens archives, unpacked (ml-1m ``ratings.dat``,
                 ml-100k ``u.data``)

Every importer fails with a `DataFormatError` naming the file, the line and what it
expected; none of them writes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from modrec.data.dataset import DataFormatError, Dataset, build_dataset

FORMATS = ("sequences", "pairs", "recbole", "csv", "parquet", "movielens")

# Column names that the table importer recognises when no mapping is given.
_COLUMN_GUESSES = {
    "user": ("user", "user_id", "userid", "userId", "uid", "user_id:token"),
    "item": ("item", "item_id", "itemid", "itemId", "iid", "movieId", "item_id:token"),
    "timestamp": ("timestamp", "time", "ts", "timestamp:float"),
    "weight": ("weight", "rating", "rating:float"),
}


# ---- text formats ---------------------------------------------------------------------
def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8", errors="strict")
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DataFormatError(f"{path}: file is empty; expected at least one interaction")
    return lines


def _int_tokens(path: Path, lineno: int, tokens: list[str], expected: str) -> np.ndarray:
    try:
        return np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise DataFormatError(
            f"{path}:{lineno}: expected integer ids ({expected}), got {bad!r}"
        ) from None


def read_sequences(path: str | Path, name: str | None = None) -> Dataset:
    """``user item item ...`` per line, items oldest first."""
    path = Path(path)
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        tokens = line.split()
        if not tokens:
            continue
        ids = _int_tokens(path, lineno, tokens, "'user item item ...'")
        if len(ids) < 2:
            continue  # a user with no items carries no interaction
        users.append(np.full(len(ids) - 1, ids[0]))
        items.append(ids[1:])
    if not users:
        raise DataFormatError(f"{path}: no line has a user followed by items")
    return build_dataset(
        name or path.stem,
        np.concatenate(users),
        np.concatenate(items),
        provenance={"format": "sequences", "source": str(path)},
    )


def read_pairs(path: str | Path, name: str | None = None) -> Dataset:
    """``user item`` (optionally ``timestamp``) per line, in chronological order."""
    path = Path(path)
    lines = _read_lines(path)
    rows = []
    width = None
    for lineno, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        if width is None:
            width = len(tokens)
            if width not in (2, 3):
                raise DataFormatError(
                    f"{path}:{lineno}: expected 2 columns 'user item' (or 3 with a "
                    f"timestamp), got {width}"
                )
        elif len(tokens) != width:
            raise DataFormatError(
                f"{path}:{lineno}: expected {width} columns like the first line, got "
                f"{len(tokens)}"
            )
        rows.append(_int_tokens(path, lineno, tokens, "'user item [timestamp]'"))
    table = np.stack(rows)
    return build_dataset(
        name or path.stem,
        table[:, 0],
        table[:, 1],
        timestamps=table[:, 2] if width == 3 else None,
        provenance={"format": "pairs", "source": str(path)},
    )


# ---- tables ---------------------------------------------------------------------------
def read_table(
    path: str | Path, columns: dict[str, str] | None = None, name: str | None = None
) -> Dataset:
    """CSV/TSV or Parquet with a column mapping ``{"user": ..., "item": ..., ...}``;
    known names (userId, item_id, timestamp, rating, ...) are found without one."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        sep = "\t" if path.suffix in (".tsv", ".inter") else ","
        try:
            frame = pd.read_csv(path, sep=sep)
        except pd.errors.EmptyDataError:
            raise DataFormatError(f"{path}: file is empty; expected a header row") from None
        except pd.errors.ParserError as err:
            raise DataFormatError(f"{path}: {err}") from None
    if frame.empty:
        raise DataFormatError(f"{path}: table has a header but no rows")
    mapping = _resolve_columns(path, list(frame.columns), columns or {})
    line_offset = 2  # 1-based lines plus the header
    ts = None
    if "timestamp" in mapping:
        ts = _numeric_column(path, frame, mapping["timestamp"], line_offset)
    weights = None
    if "weight" in mapping:
        weights = _numeric_column(path, frame, mapping["weight"], line_offset)
    return build_dataset(
        name or path.stem,
        frame[mapping["user"]].to_numpy(),
        frame[mapping["item"]].to_numpy(),
        timestamps=ts,
        weights=weights,
        provenance={"format": "table", "source": str(path), "columns": mapping},
    )


def _resolve_columns(path: Path, present: list[str], given: dict[str, str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for role, guesses in _COLUMN_GUESSES.items():
        if role in given:
            if given[role] not in present:
                raise DataFormatError(
                    f"{path}: column {given[role]!r} (for {role}) not found; columns are "
                    f"{present}"
                )
            mapping[role] = given[role]
            continue
        found = next((c for c in present if c in guesses), None)
        if found is not None:
            mapping[role] = found
    for role in ("user", "item"):
        if role not in mapping:
            raise DataFormatError(
                f"{path}: no {role} column among {present}; name it with "
                f"--columns {role}=COLUMN"
            )
    return mapping


def _numeric_column(path: Path, frame: pd.DataFrame, column: str, offset: int) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy())
    if len(bad):
        row = int(bad[0])
        raise DataFormatError(
            f"{path}:{row + offset}: column {column!r} must be numeric, got "
            f"{frame[column].iloc[row]!r}"
        )
    return values.to_numpy()


# ---- RecBole atomic files -------------------------------------------------------------
def _read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header ``name:type``; the type suffix is
    stripped from the column names."""
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    except pd.errors.EmptyDataError:
        raise DataFormatError(f"{path}: file is empty; expected a 'name:type' header") from None
    except pd.errors.ParserError as err:
        raise DataFormatError(f"{path}: {err} (RecBole atomic files are tab-separated)") from None
    if not all(":" in c for c in frame.columns):
        raise DataFormatError(
            f"{path}:1: expected a RecBole header of 'name:type' fields, got "
            f"{list(frame.columns)}"
        )
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def read_recbole(path: str | Path, name: str | None = None) -> Dataset:
    """``X.inter`` (with optional ``X.item``/``X.user`` beside it), or a pre-split
    ``X.train.inter``/``X.valid.inter``/``X.test.inter`` set. Pass the ``.inter`` file
    or the folder that holds it."""
    path = Path(path)
    folder, stem = _recbole_stem(path)
    split_files = [folder / f"{stem}.{part}.inter" for part in ("train", "valid", "test")]
    if all(f.exists() for f in split_files):
        return _read_recbole_presplit(folder, stem, split_files, name)
    inter_path = folder / f"{stem}.inter"
    frame = _read_atomic(inter_path)
    for column in ("user_id", "item_id"):
        if column not in frame.columns:
            raise DataFormatError(
                f"{inter_path}:1: missing column '{column}:token'; columns are "
                f"{list(frame.columns)}"
            )
    ts = _numeric_column(inter_path, frame, "timestamp", 2) if "timestamp" in frame else None
    weights = _numeric_column(inter_path, frame, "rating", 2) if "rating" in frame else None
    item_table = None
    item_path = folder / f"{stem}.item"
    if item_path.exists():
        item_table = _read_atomic(item_path)
        if "movie_title" in item_table.columns:
            item_table = item_table.rename(columns={"movie_title": "title"})
    return build_dataset(
        name or stem,
        frame["user_id"].to_numpy(),
        frame["item_id"].to_numpy(),
        timestamps=ts,
        weights=weights,
        item_table=item_table,
        provenance={"format": "recbole", "source": str(inter_path)},
    )


def _recbole_stem(path: Path) -> tuple[Path, str]:
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        if not inters:
            raise DataFormatError(f"{path}: no .inter file in this folder")
        path = inters[0]
    if path.suffix != ".inter":
        raise DataFormatError(f"{path}: expected a RecBole '.inter' file")
    stem = path.name[: -len(".inter")]
    for part in (".train", ".valid", ".test"):
        stem = stem.removesuffix(part)
    return path.parent, stem


def _read_recbole_presplit(
    folder: Path, stem: str, files: list[Path], name: str | None
) -> Dataset:
    """Rebuild each user's full sequence from prefix-style split files.

    Each row is ``user  item_id_list  item_id`` (a history, possibly truncated, and the
    next item). Train rows of a user are written newest first; the earliest one holds
    the first item(s). The sequence is that first history followed by every target in
    time order; the test row's history is checked against it, so a file that breaks
    these assumptions fails loudly instead of yielding a wrong split.
    """
    train, valid, test = (_read_atomic(f) for f in files)
    for f, frame in zip(files, (train, valid, test), strict=True):
        if not {"user_id", "item_id_list", "item_id"} <= set(frame.columns):
            raise DataFormatError(
                f"{f}:1: expected columns user_id, item_id_list, item_id; got "
                f"{list(frame.columns)}"
            )
    sequences: dict[str, list[str]] = {}
    for user, rows in train.iloc[::-1].groupby("user_id", sort=False):
        first = rows.iloc[0]
        sequences[user] = first["item_id_list"].split() + rows["item_id"].tolist()
    users, items = [], []
    for (_, v), (_, t) in zip(valid.iterrows(), test.iterrows(), strict=True):
        user = t["user_id"]
        seq = sequences.get(user, v["item_id_list"].split()) + [v["item_id"], t["item_id"]]
        history = t["item_id_list"].split()
        if seq[-1 - len(history) : -1] != history:
            raise DataFormatError(
                f"{files[2]}: the test history of user {user} does not match the train "
                "and valid files; cannot rebuild the sequence"
            )
        users.extend([user] * len(seq))
        items.extend(seq)
    item_table = None
    text_path = folder / f"{stem}.text"
    index_path = folder / f"{stem}.item2index"
    if text_path.exists() and index_path.exists():
        # UniSRec layout: the .text file is keyed by ASIN, .item2index maps ASIN -> id.
        index = pd.read_csv(index_path, sep="\t", header=None, names=["asin", "item_id"], dtype=str)
        text = _read_atomic(text_path).rename(columns={"item_id": "asin"})
        item_table = index.merge(text, on="asin", how="left")
    return build_dataset(
        name or stem,
        np.array(users),
        np.array(items),
        item_table=item_table,
        provenance={
            "format": "recbole-presplit",
            "source": [str(f) for f in files],
            "split": "leave-one-out, rebuilt from the split files",
        },
    )


# ---- MovieLens originals --------------------------------------------------------------
def read_movielens(folder: str | Path, name: str | None = None) -> Dataset:
    """An unpacked GroupLens archive: ml-1m (``ratings.dat``, ``movies.dat``) or
    ml-100k (``u.data``, ``u.item``). Ratings become interactions ordered by time."""
    folder = Path(folder)
    if (folder / "ratings.dat").exists():
        ratings = _read_separated(folder / "ratings.dat", "::", ["user", "item", "rating", "ts"])
        movies = folder / "movies.dat"
        items = read_movielens_movies(movies) if movies.exists() else None
        default_name = "ml-1m"
    elif (folder / "u.data").exists():
        ratings = _read_separated(folder / "u.data", "\t", ["user", "item", "rating", "ts"])
        items = None
        if (folder / "u.item").exists():
            items = pd.read_csv(
                folder / "u.item", sep="|", header=None, encoding="latin-1", usecols=[0, 1],
                names=["item_id", "title"],
            )
        default_name = "ml-100k"
    else:
        raise DataFormatError(
            f"{folder}: not an unpacked MovieLens archive (expected ratings.dat or u.data)"
        )
    return build_dataset(
        name or default_name,
        ratings[:, 0],
        ratings[:, 1],
        timestamps=ratings[:, 3],
        weights=ratings[:, 2],
        item_table=items,
        provenance={"format": "movielens", "source": str(folder)},
    )


def read_movielens_movies(path: Path) -> pd.DataFrame:
    """GroupLens ``movies.dat``: item_id, title, genres (pipe-separated)."""
    return pd.read_csv(
        path, sep="::", engine="python", header=None, encoding="latin-1",
        names=["item_id", "title", "genres"], dtype={"item_id": str},
    )


def _read_separated(path: Path, sep: str, names: list[str]) -> np.ndarray:
    lines = _read_lines(path)
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        tokens = line.strip().split(sep)
        if len(tokens) != len(names):
            raise DataFormatError(
                f"{path}:{lineno}: expected {len(names)} fields {names} separated by "
                f"{sep!r}, got {len(tokens)}"
            )
        rows.append(_int_tokens(path, lineno, tokens, f"{sep!r}-separated integers"))
    return np.stack(rows)


# ---- dispatch -------------------------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """Guess a file's format from its name and first lines; `--format` overrides."""
    path = Path(path)
    if path.is_dir():
        if (path / "manifest.json").exists():
            return "modrec"
        if (path / "ratings.dat").exists() or (path / "u.data").exists():
            return "movielens"
        if any(path.glob("*.inter")):
            return "recbole"
        raise DataFormatError(
            f"{path}: cannot tell the format of this folder; expected a modrec dataset, "
            "an unpacked MovieLens archive or RecBole .inter files"
        )
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".inter":
        return "recbole"
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".txt", ".dat", ""):
        head = []
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    head.append(line.split())
                if len(head) >= 1000:
                    break
        if not head:
            raise DataFormatError(f"{path}: file is empty; expected at least one interaction")
        widths = {len(t) for t in head}
        users = [t[0] for t in head]
        # Pair files repeat the user on consecutive lines; sequence files do not.
        if widths <= {2, 3} and len(widths) == 1 and len(set(users)) < len(users):
            return "pairs"
        return "sequences"
    raise DataFormatError(
        f"{path}: unknown format {suffix!r}; pass --format with one of {', '.join(FORMATS)}"
    )


def import_path(
    path: str | Path, format: str | None = None, columns: dict[str, str] | None = None
) -> Dataset:
    """Read any supported file or folder into a Dataset."""
    path = Path(path)
    fmt = format or detect_format(path)
    if fmt == "modrec":
        return Dataset.read(path)
    readers: dict[str, Callable[[], Dataset]] = {
        "sequences": lambda: read_sequences(path),
        "pairs": lambda: read_pairs(path),
        "recbole": lambda: read_recbole(path),
        "csv": lambda: read_table(path, columns),
        "parquet": lambda: read_table(path, columns),
        "movielens": lambda: read_movielens(path),
    }
    if fmt not in readers:
        raise DataFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return readers[fmt]()
