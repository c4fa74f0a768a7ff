"""The source formats and the one entry point that reads any of them, `import_path`:
the format named, or detected from the file (`detect_format`), picks a reader from
`READERS`, and the result's consecutive repeats are dropped or kept (`settle_repeats`).

Formats:
  ``sequences``  text, one user per line: ``user item item ...`` (chronological)
  ``pairs``      text, one interaction per line: ``user item [timestamp]``
  ``recbole``    RecBole atomic files (``.inter`` with ``name:type`` headers, optional
                 ``.item``/``.user``; also pre-split ``X.train/valid/test.inter``)
  ``csv`` / ``parquet``  a table with a column mapping (user, item, [timestamp], [weight])
  ``csv-large`` / ``parquet-large``  the same tables read by DuckDB under a memory
                 limit (`modrec.data.large`); chosen by itself for a detected
                 CSV/TSV or Parquet file of at least ``MODREC_LARGE_IMPORT_BYTES``
                 (1 GiB), and for a folder of Parquet files; ``--format csv`` or
                 ``--format parquet`` forces the in-memory reader
  ``movielens``  the original GroupLens archives, unpacked (ml-1m ``ratings.dat``,
                 ml-100k ``u.data``)
  ``modrec-state``  the SQLite user state ``modrec serve --state`` writes: its events
                 over the seeded catalog plus live items (`modrec.data.state_source`);
                 detected from the file's first bytes, whatever its name
  ``video-folder`` labelled clips as ``ROOT/CLASS/clip.mp4`` (detected from a folder
                 of class folders holding videos), ``video-csv`` a ``path,label[,group]``
                 CSV of clips (named, never detected: it is a CSV like any other);
                 catalogs without interactions (`modrec.data.video_catalog`)

A gzip-compressed file is read as the file it holds (``x.csv.gz`` is a CSV). Every
reader fails with a `DataFormatError` naming the file, the line and what it expected;
none of them writes anything.

Above both readers, the pandas one (`modrec.data.importers`) and the DuckDB one
(`modrec.data.large`); what they share is below them (`modrec.data.files`,
`modrec.data.table_columns`). A new format is a reader function and its line in
`READERS` (plus its name in `FORMATS`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from modrec.data.dataset import DataFormatError, Dataset, settle_repeats
from modrec.data.files import compression, format_suffix, open_text
from modrec.data.importers import (
    read_movielens,
    read_pairs,
    read_recbole,
    read_sequences,
    read_table,
)
from modrec.data.large import large_threshold, read_parquet_large, read_table_large
from modrec.data.state_source import FORMAT as STATE_FORMAT
from modrec.data.state_source import check_state, is_sqlite, read_state
from modrec.data.video_catalog import is_video_folder, read_video_csv, read_video_folder

FORMATS = ("sequences", "pairs", "recbole", "csv", "csv-large", "parquet", "parquet-large",
           "movielens", STATE_FORMAT, "video-folder", "video-csv")

Reader = Callable[[Path, dict[str, str] | None], Dataset]

# Format -> reader of (path, column mapping). "modrec" (a dataset folder) is detected,
# never named. Each reader is looked up when called, so a test may replace one.
READERS: dict[str, Reader] = {
    "modrec": lambda path, columns: Dataset.read(path),
    "sequences": lambda path, columns: read_sequences(path),
    "pairs": lambda path, columns: read_pairs(path),
    "recbole": lambda path, columns: read_recbole(path),
    "csv": lambda path, columns: read_table(path, columns),
    "csv-large": lambda path, columns: read_table_large(path, columns),
    "parquet": lambda path, columns: read_table(path, columns),
    "parquet-large": lambda path, columns: read_parquet_large(path, columns),
    "movielens": lambda path, columns: read_movielens(path),
    STATE_FORMAT: lambda path, columns: read_state(path),
    "video-folder": lambda path, columns: read_video_folder(path),
    "video-csv": lambda path, columns: read_video_csv(path),
}


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
        if any(path.rglob("*.parquet")):  # a table written in parts (Spark, DuckDB, ...)
            return "parquet-large"
        if is_video_folder(path):
            return "video-folder"
        raise DataFormatError(
            f"{path}: cannot tell the format of this folder; expected a modrec dataset, "
            "an unpacked MovieLens archive, RecBole .inter files, Parquet files or "
            "labelled clips (ROOT/CLASS/clip.mp4)"
        )
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    if is_sqlite(path):  # a state is often named .db or .sqlite, or anything else
        check_state(path)
        return STATE_FORMAT
    if path.name in ("ratings.dat", "u.data"):
        return "movielens"  # whose reader says to pass the folder
    suffix = format_suffix(path).lower()
    if suffix == ".inter":
        return "recbole"
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".txt", ".dat", ""):
        if not path.is_file():
            raise DataFormatError(f"{path}: not a regular file; expected a file or a folder")
        return _detect_text(path)
    if path.is_file():
        compression(path)  # an archive (.zip, .bz2, ...): says how to unpack it
    raise DataFormatError(
        f"{path}: unknown format {path.suffix!r}; pass --format with one of {', '.join(FORMATS)}"
    )


_HEAD = 1000  # lines whose widths decide whether a text file has the shape of pairs


def _detect_text(path: Path) -> str:
    """``pairs`` or ``sequences`` for a whitespace-separated text file.

    A pairs file has one width (2 or 3 fields) and names a user on several lines;
    a sequences file names each user once, on a line of any length. Most of the first
    `_HEAD` lines must share a width of 2 or 3 (a stray line of another width keeps a
    pairs file one, so that `read_pairs` names that line, where reading it as
    sequences would turn its timestamps into items), and some user must appear twice:
    anywhere in the file, since a pairs file written in time order interleaves its
    users. A file whose every line has 3 fields and names a user of its own reads
    either way (one 'user item timestamp' each, or two items each) and is refused."""
    widths: Counter[int] = Counter()
    seen: set[str] = set()
    repeated = False
    all_three = True
    lines = 0
    shaped = None  # whether the first lines have the shape of pairs, once they are read
    with open_text(path, "utf-8-sig", errors="replace") as f:
        for line in f:
            tokens = line.split()
            if not tokens:
                continue
            lines += 1
            if lines <= _HEAD:
                widths[len(tokens)] += 1
            else:
                shaped = _pairs_shaped(widths) if shaped is None else shaped
                if not shaped:
                    return "sequences"  # the lengths vary
                if repeated:
                    return "pairs"
            all_three = all_three and len(tokens) == 3
            repeated = repeated or tokens[0] in seen
            seen.add(tokens[0])
    if not lines:
        raise DataFormatError(f"{path}: file is empty; expected at least one interaction")
    if repeated and _pairs_shaped(widths):
        return "pairs"
    if all_three and lines > 1:
        raise DataFormatError(
            f"{path}: cannot tell pairs from sequences: all {lines} lines have 3 fields and "
            "no user appears on two of them, so the file reads as 'user item timestamp' "
            "pairs (one interaction per user) or as 'user item item' sequences (two per "
            "user); expected --format pairs or --format sequences to say which")
    return "sequences"


def _pairs_shaped(widths: Counter[int]) -> bool:
    """Most lines share one width, of 2 or 3 fields."""
    width, count = widths.most_common(1)[0]
    return width in (2, 3) and 2 * count > sum(widths.values())


def import_path(
    path: str | Path, format: str | None = None, columns: dict[str, str] | None = None,
    repeats: str = "drop",
) -> Dataset:
    """Read any supported file or folder into a Dataset; its consecutive repeated
    events (the same user and item back to back) are dropped or kept as ``repeats``
    says (`settle_repeats`), whichever reader read it."""
    path = Path(path)
    fmt = format or detect_format(path)
    if format is None and fmt in ("csv", "parquet") and path.stat().st_size >= large_threshold():
        fmt = f"{fmt}-large"
    if fmt not in READERS:
        raise DataFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        dataset = READERS[fmt](path, columns)
    except DataFormatError as err:
        if format is None and fmt in ("pairs", "sequences"):
            raise DataFormatError(
                f"{err} (read as {fmt}, guessed from its lines; --format chooses)"
            ) from None
        raise
    return settle_repeats(dataset, repeats)
