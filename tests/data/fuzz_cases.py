"""Generated importer inputs and the oracle that judges what modrec made of them.

Shared by the CI property tests (``tests/data/test_importers_fuzz.py``) and the long run
(``benchmarks/fuzz_importers.py``). Every case starts from a small VALID input of one
format (written the way the format's producers write it), applies one mutation family,
and goes through a public entry point: ``import_path`` with the format named, with the
format guessed, or ``load_dataset`` (which also caches). The oracle accepts exactly two
outcomes:

* a `Dataset` whose invariants hold (items 1..N, users 0..U-1, no missing ids,
  int64 timestamps, every id and timestamp spelled somewhere in the source, so nothing
  wrapped around), equal to a reference reading when the mutation keeps the meaning
  (CRLF, a BOM, duplicated rows); or
* a `DataFormatError` that names the file, says what was expected and, when the
  mutation sits on a known line, names that line.

Anything else (another exception, an error for a valid input, a dataset for an input
that cannot be represented, a half-written cache entry) is a bug.
"""

from __future__ import annotations

import csv
import io
import os
import re
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import strategies as st

from modrec.data import DataFormatError, Dataset, load_dataset
from modrec.data.formats import import_path

FORMATS = ("sequences", "pairs", "recbole", "recbole-presplit", "csv", "parquet", "movielens")
FAMILIES = (
    "none", "truncate", "wrong_columns", "odd_width_line", "bad_timestamp", "empty",
    "header_only", "crlf", "bom", "invalid_utf8", "nul", "non_ascii_digits", "huge_values",
    "blank_nan_ids", "duplicate_rows", "directory", "combo",
)
ENTRIES = ("import", "auto", "load")
OUTCOMES = ("valid", "clean", "other", "bad_error", "bad_valid")
TALLY: Counter[str] = Counter()  # outcomes of the CI run, printed by conftest.py

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
_HUGE = (2**63 - 1, -(2**63), 2**63, 2**64, 2**64 - 1, -(2**63) - 1, 10**30, 10**400)
_DIGITS = (0x660, 0x6F0, 0x966, 0x9E6, 0xFF10, 0x1D7CE)  # Arabic-Indic ... math bold
_SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹"
_BAD_TIMESTAMPS = ("abc", "1.5", "12:30", "2001-09-09", "1e9", "0x1F", "--1", "inf", "nan",
                   "1_000", "+-3", "")
_BAD_RATINGS = ("abc", "--1", "five", "1.2.3", "nan", "inf")
_BAD_INTS = ("abc", "1.5", "1e3", "0x10", "--1", "1_000", "nan", "١")
_MISSING_IDS = ("", "NaN", "nan", "NA", "null", " ", "None", "N/A", "<NA>")
_INVALID_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80\x80", b"\xf4\x90\x80\x80")
_BYTE_FAMILIES = ("truncate", "crlf", "bom", "invalid_utf8", "nul")
_FIELD_FAMILIES = ("wrong_columns", "bad_timestamp", "non_ascii_digits", "huge_values",
                   "blank_nan_ids", "duplicate_rows")

Reading = dict[str, list[tuple[str, int | None]]]  # user id -> [(item id, timestamp)]


@dataclass
class TextFile:
    """One text file of a case: rows of fields, rendered with ``sep``."""

    name: str
    rows: list[list[str]]
    sep: str
    roles: tuple[str, ...]  # per column: user, item, ts, rating, list, text
    header: list[str] | None = None
    variable: bool = False  # sequences: any number of columns, the rest are items
    int_ids: bool = False  # ids must be integers (and are normalised as such)
    encoding: str = "utf-8"
    side: bool = False  # an optional catalog beside the interactions

    def role(self, col: int) -> str:
        if self.variable:
            return self.roles[min(col, len(self.roles) - 1)]
        return self.roles[col] if col < len(self.roles) else "extra"

    def line_of(self, row: int) -> int:
        return row + 1 + (self.header is not None)

    def render(self) -> str:
        out = io.StringIO()
        rows = ([self.header] if self.header is not None else []) + self.rows
        if self.sep == ",":
            csv.writer(out, lineterminator="\n").writerows(rows)
        else:
            out.writelines(self.sep.join(row) + "\n" for row in rows)
        return out.getvalue()

    def copy(self) -> TextFile:
        return replace(self, rows=[list(r) for r in self.rows],
                       header=list(self.header) if self.header is not None else None)


@dataclass
class Case:
    """A generated input, how to read it, and what the oracle expects."""

    fmt: str
    files: list[TextFile]
    entry: str  # path passed in, relative to the data folder ("" is the folder)
    format_arg: str
    columns: dict[str, str] | None = None
    frame: pd.DataFrame | None = None  # the parquet table
    frame_roles: dict[str, str] = field(default_factory=dict)  # role -> parquet column
    truth: Reading | None = None  # pre-split RecBole: the sequences it was written from
    mode: str = "import"
    family: str = "none"
    target: str = ""
    expect: str = "either"  # valid, error or either
    line: int | None = None  # the line (or parquet row) an error must name
    compare: bool = False  # a valid result must equal the reference reading
    blobs: dict[str, bytes | None] = field(default_factory=dict)  # None: a directory
    spelled: bool = True  # every id and timestamp must be spelled in the source

    def describe(self) -> str:
        shown = {name: (blob[:300] if blob is not None else "<directory>")
                 for name, blob in self.blobs.items()}
        return (f"format={self.fmt} family={self.family} mode={self.mode} entry={self.entry!r} "
                f"target={self.target} expect={self.expect} line={self.line} "
                f"columns={self.columns} files={shown}")


@dataclass
class Outcome:
    kind: str  # one of OUTCOMES
    detail: str = ""


# ---- valid inputs ---------------------------------------------------------------------
_ints = st.integers(0, 10**6)
_items = st.integers(0, 60)
_times = st.integers(0, 2_000_000_000)
_token_ids = st.builds(lambda p, n: f"{p}{n}", st.sampled_from(["", "", "i", "B00", "ü"]),
                       st.integers(0, 40))
_titles = st.sampled_from(["Toy Story", "Amélie", "Heat, 1995", "Se7en", "Ran"])


@st.composite
def _sequences(draw: st.DrawFn) -> Case:
    users = draw(st.lists(_ints, min_size=1, max_size=5, unique=True))
    rows = [[str(u)] + [str(i) for i in draw(st.lists(_items, min_size=1, max_size=6))]
            for u in users]
    f = TextFile("seq.txt", rows, " ", ("user", "item"), variable=True, int_ids=True)
    return Case("sequences", [f], "seq.txt", "sequences")


@st.composite
def _pairs(draw: st.DrawFn) -> Case:
    users = draw(st.lists(_ints, min_size=1, max_size=4, unique=True))
    with_ts = draw(st.booleans())
    rows = []
    for k, user in enumerate(users):
        # The first user has two rows at least: pair files repeat users, which is how
        # a pairs file is told from a sequences file.
        for _ in range(draw(st.integers(2 if k == 0 else 1, 4))):
            row = [str(user), str(draw(_items))]
            rows.append(row + [str(draw(_times))] if with_ts else row)
    roles = ("user", "item", "ts") if with_ts else ("user", "item")
    return Case("pairs", [TextFile("pairs.txt", rows, " ", roles, int_ids=True)],
                "pairs.txt", "pairs")


@st.composite
def _recbole(draw: st.DrawFn) -> Case:
    with_ts, with_rating = draw(st.booleans()), draw(st.booleans())
    header, roles = ["user_id:token", "item_id:token"], ["user", "item"]
    if with_rating:
        header, roles = header + ["rating:float"], roles + ["rating"]
    if with_ts:
        header, roles = header + ["timestamp:float"], roles + ["ts"]
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        row = [draw(_token_ids), draw(_token_ids)]
        if with_rating:
            row.append(draw(st.sampled_from(["1", "2.5", "5", "4.0"])))
        if with_ts:
            row.append(str(draw(_times)))
        rows.append(row)
    files = [TextFile("x.inter", rows, "\t", tuple(roles), header=header)]
    if draw(st.booleans()):
        items = sorted({r[1] for r in rows} | set(draw(st.lists(_token_ids, max_size=2))))
        files.append(TextFile("x.item", [[i, draw(_titles)] for i in items], "\t",
                              ("item", "text"), header=["item_id:token", "movie_title:token_seq"],
                              side=True))
    return Case("recbole", files, draw(st.sampled_from(["x.inter", ""])), "recbole")


@st.composite
def _presplit(draw: st.DrawFn) -> Case:
    users = draw(st.lists(st.integers(0, 99), min_size=1, max_size=4, unique=True))
    train, valid, test = [], [], []
    truth: Reading = {}
    for user in users:
        seq = [str(i) for i in draw(st.lists(_items, min_size=3, max_size=7))]
        truth[str(user)] = [(item, None) for item in seq]
        n = len(seq)
        # Newest first, as RecBole writes them; the oldest row holds the first item.
        train += [[str(user), " ".join(seq[:k]), seq[k]] for k in range(n - 3, 0, -1)]
        valid.append([str(user), " ".join(seq[: n - 2]), seq[n - 2]])
        test.append([str(user), " ".join(seq[: n - 1]), seq[n - 1]])
    header = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
    files = [TextFile(f"x.{part}.inter", rows, "\t", ("user", "list", "item"), header=header)
             for part, rows in (("train", train), ("valid", valid), ("test", test))]
    entry = draw(st.sampled_from(["x.train.inter", "x.valid.inter", "x.test.inter", ""]))
    return Case("recbole-presplit", files, entry, "recbole", truth=truth)


@st.composite
def _table_rows(draw: st.DrawFn) -> tuple[list[str], list[str], list[list[str]], bool]:
    """Roles, the order of the columns, rows (as text) and whether ids are integers."""
    roles = ["user", "item"]
    if draw(st.booleans()):
        roles.append("ts")
    if draw(st.booleans()):
        roles.append("rating")
    int_ids = draw(st.booleans())
    ids = st.integers(0, 500).map(str) if int_ids else _token_ids
    order = draw(st.permutations(roles))
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        value = {"user": draw(ids), "item": draw(ids), "ts": str(draw(_times)),
                 "rating": draw(st.sampled_from(["1", "3.5", "5"]))}
        rows.append([value[r] for r in order])
    return roles, list(order), rows, int_ids


_GUESSED = {"user": "user_id", "item": "item_id", "ts": "timestamp", "rating": "rating"}
_CUSTOM = {"user": "who", "item": "what", "ts": "when", "rating": "stars"}
_MAPPING_ROLE = {"user": "user", "item": "item", "ts": "timestamp", "rating": "weight"}


@st.composite
def _csv(draw: st.DrawFn) -> Case:
    _, order, rows, _ = draw(_table_rows())
    names = draw(st.sampled_from([_GUESSED, _CUSTOM]))
    columns = {_MAPPING_ROLE[r]: names[r] for r in order} if names is _CUSTOM else None
    suffix = draw(st.sampled_from([".csv", ".tsv"]))
    header = [names[r] for r in order]
    roles = list(order)
    if suffix == ".csv" and draw(st.booleans()):  # a quoted free-text column
        header.append("note")
        roles.append("text")
        rows = [row + [draw(st.sampled_from(["a, b", "plain", ""]))] for row in rows]
    f = TextFile(f"t{suffix}", rows, "," if suffix == ".csv" else "\t", tuple(roles),
                 header=header)
    return Case("csv", [f], f.name, "csv", columns=columns)


@st.composite
def _parquet(draw: st.DrawFn) -> Case:
    roles, order, rows, int_ids = draw(_table_rows())
    names = draw(st.sampled_from([_GUESSED, _CUSTOM]))
    columns = {_MAPPING_ROLE[r]: names[r] for r in order} if names is _CUSTOM else None
    data: dict[str, object] = {}
    for k, role in enumerate(order):
        values = [row[k] for row in rows]
        if role in ("user", "item"):
            data[names[role]] = np.array([int(v) for v in values]) if int_ids else values
        elif role == "ts":
            data[names[role]] = np.array([int(v) for v in values], dtype=np.int64)
        else:
            data[names[role]] = np.array([float(v) for v in values])
    return Case("parquet", [], "t.parquet", "parquet", columns=columns,
                frame=pd.DataFrame(data), frame_roles={r: names[r] for r in order})


@st.composite
def _movielens(draw: st.DrawFn) -> Case:
    ml1m = draw(st.booleans())
    rows = []
    for user in draw(st.lists(st.integers(1, 6040), min_size=1, max_size=4, unique=True)):
        for _ in range(draw(st.integers(1, 4))):
            rows.append([str(user), str(draw(st.integers(1, 3952))),
                         str(draw(st.integers(1, 5))), str(draw(_times))])
    roles = ("user", "item", "rating", "ts")
    items = sorted({int(r[1]) for r in rows})
    if ml1m:
        files = [TextFile("ratings.dat", rows, "::", roles, int_ids=True)]
        if draw(st.booleans()):
            files.append(TextFile(
                "movies.dat", [[str(i), f"{draw(_titles)} (1995)", "Comedy|Drama"]
                               for i in items], "::", ("item", "text", "text"), int_ids=True,
                encoding="latin-1", side=True))
    else:
        files = [TextFile("u.data", rows, "\t", roles, int_ids=True)]
        if draw(st.booleans()):
            files.append(TextFile(
                "u.item", [[str(i), f"{draw(_titles)} (1995)", "01-Jan-1995", "", "http://x",
                            "0", "1"] for i in items], "|", ("item",) + ("text",) * 6,
                int_ids=True, encoding="latin-1", side=True))
    return Case("movielens", files, "", "movielens")


_BASES = {"sequences": _sequences, "pairs": _pairs, "recbole": _recbole,
          "recbole-presplit": _presplit, "csv": _csv, "parquet": _parquet,
          "movielens": _movielens}


# ---- mutations ------------------------------------------------------------------------
def _exotic_digits(draw: st.DrawFn, value: str) -> str:
    if not any(c.isdigit() for c in value):
        value = value + "7"
    kind = draw(st.sampled_from(_DIGITS + (-1,)))
    if kind == -1:
        return "".join(_SUPERSCRIPTS[int(c)] if c.isascii() and c.isdigit() else c
                       for c in value)
    return "".join(chr(kind + int(c)) if c.isascii() and c.isdigit() else c for c in value)


def _pick(draw: st.DrawFn, f: TextFile, roles: tuple[str, ...]) -> tuple[int, int] | None:
    spots = [(r, c) for r, row in enumerate(f.rows) for c in range(len(row))
             if f.role(c) in roles]
    return draw(st.sampled_from(spots)) if spots else None


def _field_mutation(draw: st.DrawFn, case: Case, f: TextFile, family: str
                    ) -> tuple[str, int | None]:
    """Change ``f.rows`` in place; return what the oracle expects and the line."""
    if not f.rows:
        return "either", None
    if family in ("wrong_columns", "odd_width_line"):
        if f.header is not None and draw(st.integers(0, 5)) == 0:
            if draw(st.booleans()) and len(f.header) > 1:
                f.header.pop()
            else:
                f.header.append("extra:token" if f.sep == "\t" else "extra")
            return ("either" if f.side else "error"), None
        r = draw(st.integers(0, len(f.rows) - 1))
        row = f.rows[r]
        width = len(row)
        if family == "odd_width_line" and width == 2:
            row.append("7")
        elif draw(st.booleans()) and width > 1:
            row.pop()
        else:
            row.append("7")
        if f.variable or f.side or (case.fmt == "pairs" and len(f.rows) == 1):
            return "either", None
        return "error", f.line_of(r)
    if family == "duplicate_rows":
        for _ in range(draw(st.integers(1, 3))):
            r = draw(st.integers(0, len(f.rows) - 1))
            f.rows.insert(r + 1, list(f.rows[r]))
        return ("either" if case.fmt == "recbole-presplit" else "valid"), None
    if family == "bad_timestamp":
        spot, values = None, _BAD_INTS
        for roles, choices in ((("ts",), _BAD_TIMESTAMPS), (("rating",), _BAD_RATINGS),
                               (("user", "item"), _BAD_INTS)):
            spot, values = _pick(draw, f, roles), choices
            if spot is not None:
                break
        if spot is None:
            return "either", None
        r, c = spot
        # A whitespace-separated format cannot spell an empty field.
        value = draw(st.sampled_from([v for v in values if v or f.sep != " "]))
        f.rows[r][c] = value
        strict = f.int_ids or f.role(c) in ("ts", "rating")
        return ("error" if strict and not f.side else "either"), f.line_of(r)
    if family == "non_ascii_digits":
        spot = _pick(draw, f, ("user", "item", "ts", "rating"))
        if spot is None:
            return "either", None
        r, c = spot
        f.rows[r][c] = _exotic_digits(draw, f.rows[r][c])
        if f.side or case.fmt == "recbole-presplit":
            return "either", None
        if f.int_ids or f.role(c) in ("ts", "rating"):
            return "error", f.line_of(r)
        return "valid", None  # a token id spelled in other digits is just another id
    if family == "huge_values":
        spot = _pick(draw, f, ("user", "item", "ts", "rating"))
        if spot is None:
            return "either", None
        r, c = spot
        role = f.role(c)
        if role == "rating":
            if f.int_ids:  # MovieLens ratings are integers: try the ids instead
                spot = _pick(draw, f, ("user", "item", "ts"))
                assert spot is not None
                r, c = spot
                role = f.role(c)
            else:
                f.rows[r][c] = draw(st.sampled_from(["1e39", "-1e39", "1e400"]))
                return ("either" if f.side else "error"), f.line_of(r)
        value = draw(st.sampled_from(_HUGE))
        f.rows[r][c] = str(value)
        if f.side or case.fmt == "recbole-presplit":
            return "either", None
        fits = INT64_MIN <= value <= INT64_MAX
        if role == "ts" or f.int_ids:
            return ("valid", None) if fits else ("error", f.line_of(r))
        return "valid", None  # a token id is text, whatever its length
    if family == "blank_nan_ids":
        spot = _pick(draw, f, ("user", "item"))
        if spot is None:
            return "either", None
        r, c = spot
        choices = _MISSING_IDS[1:5] if f.sep == " " else _MISSING_IDS
        f.rows[r][c] = draw(st.sampled_from(choices))
        return ("either" if f.side else "error"), f.line_of(r)
    raise AssertionError(family)


def _byte_mutation(draw: st.DrawFn, text: str, data: bytes, f: TextFile, family: str
                   ) -> tuple[bytes, str, int | None]:
    """Return the new bytes, the expectation and the line an error must name."""
    strict = "either" if f.side else "error"
    if family == "truncate":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))], "either", None
    if family == "crlf":
        ending = draw(st.sampled_from(["\r\n", "\r\n", "\r"]))
        return text.replace("\n", ending).encode(f.encoding, "replace"), "valid", None
    if family == "bom":
        return b"\xef\xbb\xbf" + data, "valid", None
    pos = draw(st.integers(0, len(text)))
    line = text[:pos].count("\n") + 1
    head, tail = text[:pos].encode(f.encoding, "replace"), text[pos:].encode(f.encoding, "replace")
    if family == "invalid_utf8":
        bad = draw(st.sampled_from(_INVALID_UTF8))
        return head + bad + tail, ("either" if f.encoding != "utf-8" else strict), line
    if family == "nul":
        if draw(st.booleans()):  # the zero-filled tail a crash leaves behind
            return head + b"\x00" * max(len(tail), 1), strict, line
        return head + b"\x00" * draw(st.integers(1, 3)) + tail, strict, line
    raise AssertionError(family)


@st.composite
def cases(draw: st.DrawFn, fmt: str, family: str) -> Case:
    """A valid input of ``fmt`` with one mutation of ``family`` applied."""
    case = draw(_BASES[fmt]())
    case.family = family
    modes = ENTRIES
    if fmt == "pairs" and family == "odd_width_line":
        modes = ("auto", "load")  # the point: not silently read as another format
    case.mode = draw(st.sampled_from(modes))
    if fmt == "parquet":
        _mutate_parquet(draw, case, family)
    else:
        _mutate_text(draw, case, family)
    # With the format guessed, a pairs file whose users no longer repeat reads as
    # sequences (and a sequences file whose users do, as pairs): the guess is documented
    # as a guess, so only the invariants are checked there.
    guessed = case.mode != "import" and fmt in ("sequences", "pairs")
    if guessed and family not in ("none", "crlf", "bom") and not (
            fmt == "pairs" and family == "duplicate_rows"):
        case.compare = False
    if guessed and fmt == "sequences" and family == "duplicate_rows":
        case.expect = "either"  # a repeated user looks like a pairs file, and may read so
    if guessed and fmt == "pairs" and family in ("wrong_columns", "odd_width_line") and len(
            case.files[0].rows) < 3:
        case.expect = "either"  # of two lines of different widths, neither is the odd one
    if guessed and _ambiguous(case.files[0]):
        case.expect = "either"  # 'user item timestamp' or 'user item item': refused
    return case


def _ambiguous(f: TextFile) -> bool:
    """Lines that read as pairs with timestamps and as sequences of two items alike:
    every one of them has 3 fields, and no user appears twice (guessing refuses them)."""
    return (len(f.rows) > 1 and all(len(row) == 3 for row in f.rows)
            and len({row[0] for row in f.rows}) == len(f.rows))


def _mutate_text(draw: st.DrawFn, case: Case, family: str) -> None:
    case.files = [f.copy() for f in case.files]
    main = [f for f in case.files if not f.side]
    side = [f for f in case.files if f.side]
    f = draw(st.sampled_from(main))
    if side and family not in ("none", "combo") and draw(st.integers(0, 4)) == 0:
        f = draw(st.sampled_from(side))
    case.target = f.name
    blobs = {g.name: g.render().encode(g.encoding, "replace") for g in case.files}
    expect, line = "valid", None
    if family == "none":
        pass
    elif family in _FIELD_FAMILIES or family == "odd_width_line":
        expect, line = _field_mutation(draw, case, f, family)
        blobs[f.name] = f.render().encode(f.encoding, "replace")
    elif family in _BYTE_FAMILIES:
        text = f.render()
        blobs[f.name], expect, line = _byte_mutation(draw, text, blobs[f.name], f, family)
    elif family == "empty":
        blobs[f.name] = draw(st.sampled_from([b"", b"\n", b"\n\n \n", b"\r\n"]))
        expect = "either" if f.side else "error"
    elif family == "header_only":
        if f.header is not None:
            f.rows = []
        else:
            f.rows = [row[:1] for row in f.rows]
        blobs[f.name] = f.render().encode(f.encoding, "replace")
        train = f.name.endswith(".train.inter")
        expect = "either" if (f.side or train) else "error"
    elif family == "directory":
        blobs[f.name] = None
        expect = "error"
    elif family == "combo":
        for sub in draw(st.lists(st.sampled_from(_FIELD_FAMILIES), max_size=2)):
            _field_mutation(draw, case, f, sub)
        text = f.render()
        blobs[f.name] = text.encode(f.encoding, "replace")
        for sub in draw(st.lists(st.sampled_from(_BYTE_FAMILIES), min_size=1, max_size=2)):
            blobs[f.name], _, _ = _byte_mutation(draw, text, blobs[f.name], f, sub)
            text = blobs[f.name].decode(f.encoding, "replace")
        expect = "either"
    else:
        raise AssertionError(family)
    case.blobs, case.expect, case.line = blobs, expect, line
    if expect == "either" and f.side and family in ("crlf", "bom", "duplicate_rows"):
        case.expect = "valid"
    # Where the mutation has a known meaning, a valid reading must match the rows. A
    # wrong width has none except in a sequences file (a longer or shorter history).
    case.compare = (family in ("none", "crlf", "bom", "duplicate_rows", "non_ascii_digits",
                               "huge_values", "bad_timestamp")
                    and case.fmt != "recbole-presplit") or (
        case.fmt == "recbole-presplit" and family in ("none", "crlf", "bom")) or (
        family == "wrong_columns" and f.variable)


def _mutate_parquet(draw: st.DrawFn, case: Case, family: str) -> None:
    assert case.frame is not None
    frame = case.frame.copy()
    roles = dict(case.frame_roles)
    case.target = "t.parquet"
    expect, line, blob = "valid", None, None
    n = len(frame)
    r = draw(st.integers(0, n - 1))
    if family in ("none", "crlf", "bom", "odd_width_line"):
        pass
    elif family == "duplicate_rows":
        picks = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))
        order = sorted(list(range(n)) + picks)
        frame = frame.iloc[order].reset_index(drop=True)
    elif family == "wrong_columns":
        if draw(st.booleans()):
            frame = frame.drop(columns=[roles[draw(st.sampled_from(["user", "item"]))]])
            expect = "error"
        else:
            frame["unrelated"] = 1
    elif family in ("bad_timestamp", "non_ascii_digits", "huge_values", "blank_nan_ids"):
        if family == "bad_timestamp" or (family != "blank_nan_ids" and draw(st.booleans())):
            if "ts" not in roles:
                roles["ts"] = "timestamp"
                frame["timestamp"] = np.arange(n, dtype=np.int64)
                case.frame_roles = roles
            col = roles["ts"]
            values = frame[col].astype(object).to_numpy()
            if family == "huge_values":
                big = draw(st.sampled_from([2**64 - 1, 2**63, 1e30, -1e30, INT64_MAX, 2.0**63]))
                if isinstance(big, float):
                    frame[col] = frame[col].astype(np.float64)
                    frame.loc[r, col] = big
                elif big > INT64_MAX:
                    frame[col] = frame[col].clip(lower=0).astype(np.uint64)
                    frame.loc[r, col] = np.uint64(big)
                else:
                    frame.loc[r, col] = big
                fits = big == INT64_MAX
                expect, line = ("valid", None) if fits else ("error", r + 1)
            else:
                values = np.array([str(v) for v in values], dtype=object)
                values[r] = (draw(st.sampled_from(_BAD_TIMESTAMPS)) if family == "bad_timestamp"
                             else _exotic_digits(draw, values[r]))
                frame[col] = values
                expect, line = "error", r + 1
        else:
            col = roles[draw(st.sampled_from(["user", "item"]))]
            if family == "huge_values":
                big = draw(st.sampled_from([2**64 - 1, 2**63, INT64_MAX]))
                values = np.array([abs(int(v)) if str(v).isdigit() else 1 for v in frame[col]],
                                  dtype=np.uint64)
                values[r] = big
                frame[col] = values
            elif family == "non_ascii_digits":
                values = frame[col].astype(str).to_numpy(dtype=object)
                values[r] = _exotic_digits(draw, values[r])
                frame[col] = values
            else:
                missing = draw(st.sampled_from([None, float("nan"), "", "NaN", " "]))
                if isinstance(missing, float):
                    values = frame[col].to_numpy(dtype=object)
                    if all(isinstance(v, (int, np.integer)) for v in values):
                        values = values.astype(np.float64)
                    else:
                        values = values.astype(str).astype(object)
                else:
                    values = frame[col].astype(str).to_numpy(dtype=object)
                values[r] = missing
                frame[col] = values
                expect, line = "error", r + 1
    elif family == "header_only":
        frame = frame.iloc[:0]
        expect = "error"
    elif family == "empty":
        blob, expect = b"", "error"
    elif family == "directory":
        expect = "error"
    elif family in ("truncate", "nul", "invalid_utf8", "combo"):
        pass  # below, on the bytes
    else:
        raise AssertionError(family)
    case.frame = frame
    if family != "directory" and blob is None:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        blob = buffer.getvalue()
        if family in ("truncate", "combo"):
            blob, expect = blob[: draw(st.integers(0, len(blob) - 1))], "error"
        elif family in ("nul", "invalid_utf8"):
            pos = draw(st.integers(0, len(blob) - 1))
            size = draw(st.integers(1, 16))
            fill = b"\x00" if family == "nul" else b"\xff"
            blob, expect = blob[:pos] + fill * size + blob[pos + size:], "either"
            # Parquet pages carry no checksum by default: a flipped byte inside a page
            # may read as another value, which is no importer's doing.
            case.spelled = False
    case.blobs = {"t.parquet": blob}
    case.expect, case.line = expect, line
    case.compare = expect == "valid"


# ---- running and judging --------------------------------------------------------------
def materialize(case: Case, folder: Path) -> Path:
    """Write the case's files under ``folder``; return the path to pass in."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in case.blobs.items():
        path = folder / name
        if blob is None:
            path.mkdir()
            (path / "data.bin").write_bytes(b"1 2\n1 3\n")
        else:
            path.write_bytes(blob)
    return folder / case.entry if case.entry else folder


def run_case(case: Case, root: Path) -> Outcome:
    """Read the case through its entry point, in a fresh cache; judge the outcome."""
    path = materialize(case, root / "data")
    cache = root / "cache"
    saved = os.environ.get("MODREC_CACHE_DIR")
    os.environ["MODREC_CACHE_DIR"] = str(cache)
    try:
        if case.mode == "import":
            ds = import_path(path, case.format_arg, case.columns)
        elif case.mode == "auto":
            ds = import_path(path, None, case.columns)
        else:
            ds = load_dataset(path, None, case.columns)
    except DataFormatError as err:
        problems = check_error(case, str(err))
        kind = "bad_error" if problems else "clean"
        outcome = Outcome(kind, "; ".join(problems) + f" | {type(err).__name__}: {err}")
    except Exception as err:  # noqa: BLE001 - any other type is what the fuzzing looks for
        frames = [f for f in traceback.extract_tb(err.__traceback__) if "modrec" in f.filename]
        where = f" (raised at {Path(frames[-1].filename).name}:{frames[-1].lineno} in " \
                f"{frames[-1].name})" if frames else ""
        outcome = Outcome("other", f"{type(err).__name__}: {err}{where}")
    else:
        problems = check_dataset(case, ds)
        outcome = Outcome("bad_valid" if problems else "valid", "; ".join(problems))
    finally:
        if saved is None:
            os.environ.pop("MODREC_CACHE_DIR", None)
        else:
            os.environ["MODREC_CACHE_DIR"] = saved
    leftovers = check_cache(cache)
    if leftovers and outcome.kind in ("valid", "clean"):
        outcome = Outcome("bad_valid" if outcome.kind == "valid" else "bad_error",
                          "; ".join(leftovers))
    return outcome


def check_cache(cache: Path) -> list[str]:
    """Every entry of the cache folder is a complete dataset with its source stamp."""
    if not cache.exists():
        return []
    problems = []
    for entry in cache.iterdir():
        if not (entry / "source.json").exists():
            inside = sorted(p.name for p in entry.iterdir()) if entry.is_dir() else "a file"
            problems.append(f"cache entry {entry.name} is incomplete: {inside}")
            continue
        try:
            Dataset.read(entry)
        except Exception as err:  # noqa: BLE001
            problems.append(f"cache entry {entry.name} unreadable: {err}")
    return problems


_LINE_REF = re.compile(r"(?::|\bline |\brow )(\d+)")


def check_error(case: Case, message: str) -> list[str]:
    problems = []
    names = {case.target}
    if case.fmt == "recbole-presplit":
        names |= {f.name for f in case.files}
    if not any(name in message for name in names):
        problems.append(f"the message does not name {case.target}")
    if not re.search("expect", message, re.IGNORECASE):
        problems.append("the message does not say what was expected")
    if case.expect == "valid":
        problems.append("a valid input was refused")
    if case.expect == "error" and case.line is not None:
        if case.line not in {int(n) for n in _LINE_REF.findall(message)}:
            problems.append(f"the message does not name line {case.line}")
    return problems


def _source_tokens(case: Case) -> set[str]:
    """Every field spelled in the source, integers also in their canonical spelling."""
    tokens: set[str] = set()
    if case.frame is not None:
        for column in case.frame.columns:
            tokens.update(str(v) for v in case.frame[column].tolist())
    for name, blob in case.blobs.items():
        if blob is None or name.endswith(".parquet"):
            continue
        for encoding in ("utf-8", "latin-1"):
            text = blob.decode(encoding, "replace").replace("\ufeff", "")
            tokens.update(re.split(r"[\s,:|\"]+", text))
    for token in list(tokens):
        if re.fullmatch(r"[+-]?[0-9]+(\.0*)?", token):
            tokens.add(str(int(token.split(".")[0])))
    return tokens


def _reference(case: Case) -> Reading:
    """What a correct importer makes of the (field-mutated) rows."""
    if case.truth is not None:
        return {user: _without_repeats(seq) for user, seq in case.truth.items()}
    seqs: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
    if case.frame is not None:
        roles = case.frame_roles
        ts = case.frame[roles["ts"]].tolist() if "ts" in roles else [None] * len(case.frame)
        for user, item, t in zip(case.frame[roles["user"]].tolist(),
                                 case.frame[roles["item"]].tolist(), ts, strict=True):
            seqs[str(user)].append((str(item), None if t is None else int(t)))
    else:
        f = next(g for g in case.files if not g.side)

        def norm(token: str) -> str:
            return str(int(token)) if f.int_ids else token

        if f.variable:
            for row in f.rows:
                seqs[norm(row[0])] += [(norm(i), None) for i in row[1:]]
        else:
            col = {f.role(c): c for c in range(len(f.roles))}
            for row in f.rows:
                t = int(row[col["ts"]].split(".")[0]) if "ts" in col else None
                seqs[norm(row[col["user"]])].append((norm(row[col["item"]]), t))
    return {user: _without_repeats(sorted(seq, key=lambda x: x[1] or 0))
            for user, seq in seqs.items() if seq}


def _without_repeats(seq: list[tuple[str, int | None]]) -> list[tuple[str, int | None]]:
    """A sequence as the importers leave it by default: an event that repeats the item
    just before it is dropped (the first of each run stays)."""
    return [event for k, event in enumerate(seq) if k == 0 or event[0] != seq[k - 1][0]]


def _observed(ds: Dataset) -> Reading:
    users = ds.users["user_id"].astype(str).to_numpy()
    items = ds.items["item_id"].astype(str).to_numpy()
    inter = ds.interactions
    ts = (inter["timestamp"].tolist() if ds.has_timestamps else [None] * len(inter))
    seqs: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
    for u, i, t in zip(inter["user"].tolist(), inter["item"].tolist(), ts, strict=True):
        seqs[users[u]].append((items[i - 1], t))
    return dict(seqs)


def check_dataset(case: Case, ds: Dataset) -> list[str]:
    problems = []
    if case.expect == "error":
        problems.append("an input that must fail was accepted")
    inter, items, users = ds.interactions, ds.items, ds.users
    n, u = len(items), len(users)
    if len(inter) == 0:
        problems.append("no interactions")
    if not np.array_equal(items["item"].to_numpy(), np.arange(1, n + 1)):
        problems.append("item indices are not 1..N")
    if not np.array_equal(users["user"].to_numpy(), np.arange(u)):
        problems.append("user indices are not 0..U-1")
    if len(inter) and not (inter["item"].between(1, n).all() and inter["user"].between(0, u - 1)
                           .all()):
        problems.append("interactions point outside the tables")
    for label, ids in (("item", items["item_id"]), ("user", users["user_id"])):
        if ids.isna().any() or ids.astype(str).str.strip().isin(_MISSING_IDS).any():
            problems.append(f"a missing {label} id was kept: {ids.tolist()}")
        if ids.duplicated().any():
            problems.append(f"duplicate {label} ids")
    if ds.has_timestamps and inter["timestamp"].dtype != np.int64:
        problems.append(f"timestamps are {inter['timestamp'].dtype}, not int64")
    tokens = _source_tokens(case) if case.spelled else set()
    spelled = set(items["item_id"].astype(str)) | set(users["user_id"].astype(str))
    if ds.has_timestamps:
        spelled |= {str(t) for t in inter["timestamp"].tolist()}
    unknown = sorted(spelled - tokens) if case.spelled else []
    if unknown:
        problems.append(f"values not in the source (wrapped or invented): {unknown[:5]}")
    if case.compare and not problems:
        expected, got = _reference(case), _observed(ds)
        if expected != got:
            problems.append(f"read {got}, expected {expected}")
    return problems
