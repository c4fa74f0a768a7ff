"""Named public datasets: where each lives in the data directory, how to read it, and
where to download the original from (with its checksum) when it is missing.

`load_dataset(name_or_path)` is the one entry point. Converted datasets are cached
under `modrec.paths.cache_dir()` and reused while the source files are unchanged, so a
second load of ML-1M reads three Parquet files and takes well under a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from modrec import paths
from modrec.data.dataset import (
    REPEATS,
    DataFormatError,
    Dataset,
    build_dataset,
    ensure_row_groups,
    report_repeats,
    settle_repeats,
)
from modrec.data.formats import import_path
from modrec.data.importers import (
    read_movielens,
    read_movielens_movies,
    read_pairs,
    read_recbole,
    read_sequences,
)
from modrec.data.state_schema import is_postgres_url, redact
from modrec.data.state_source import read_state
from modrec.errors import ConfigError, UnavailableError

log = logging.getLogger(__name__)


class DatasetUnavailable(UnavailableError):
    """A named dataset is neither in the data directory nor downloadable right now."""


@dataclass(frozen=True)
class Download:
    url: str
    filename: str  # saved under the data directory with this relative path
    digest: str  # "md5:..." or "sha256:..."
    unzip: bool = False


@dataclass(frozen=True)
class NamedDataset:
    name: str
    description: str
    files: tuple[str, ...]  # relative to the data directory; the first is the main one
    reader: Callable[[Path], Dataset]  # receives the data directory
    download: Download | None = None
    alternatives: tuple[str, ...] = ()  # other main files that the reader also accepts
    # Vectors the dataset ships, usable as encoders: name -> (matrix .npy, TSV naming
    # each row's item, its id column), paths relative to the data directory.
    precomputed: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    extras: tuple[str, ...] = ()  # optional content files (they key the cache too)

    def present(self, root: Path) -> bool:
        return all((root / f).exists() for f in self.files) or any(
            (root / f).exists() for f in self.alternatives
        )


# ---- readers for the named layouts ----------------------------------------------------
def _read_ml1m(root: Path) -> Dataset:
    folder = root / "ml-1m"
    if (folder / "ml1m_user_sequences_origids.txt").exists():
        ds = read_sequences(folder / "ml1m_user_sequences_origids.txt", name="ml-1m")
    else:  # the GroupLens original, as the download leaves it
        ds = read_movielens(folder, name="ml-1m")
    if (folder / "movies.dat").exists():
        movies = read_movielens_movies(folder / "movies.dat")
        ds.items = ds.items[["item", "item_id"]].merge(movies, on="item_id", how="left")
    if (folder / "ml1m_extended_movie_tmdb.csv").exists():
        tmdb = _tmdb_text(folder / "ml1m_extended_movie_tmdb.csv")
        ds.items = ds.items.merge(tmdb, on="item_id", how="left")
    return ds


def _tmdb_text(path: Path) -> pd.DataFrame:
    """Per movie: ``text`` (title, year, TMDB overview, director, leading actors; no
    genres, which are MovieLens's labels) and ``tmdb_genres`` (TMDB's own taxonomy)."""
    tmdb = pd.read_csv(path, dtype={"MovieID": str})

    def text(row: pd.Series) -> str:
        parts = [f"{row['Title']}."]
        for label, column in (("", "overview"), ("Directed by ", "director"),
                              ("Starring ", "actors")):
            value = row[column]
            if isinstance(value, str) and value.strip():
                value = ", ".join(value.split("|")[:4]) if column == "actors" else value
                parts.append(f"{label}{value.strip().rstrip('.')}.")
        return " ".join(parts)

    return pd.DataFrame({"item_id": tmdb["MovieID"], "text": tmdb.apply(text, axis=1),
                         "tmdb_genres": tmdb["genres"]})


def _read_ml1m_sasrec(root: Path) -> Dataset:
    folder = root / "ml-1m"
    ds = read_pairs(folder / "ml-1m.txt", name="ml-1m-sasrec")
    item_map, movies = folder / "ml-1m_item_map.tsv", folder / "movies.dat"
    if item_map.exists() and movies.exists():
        mapping = pd.read_csv(item_map, sep="\t", dtype=str)
        ds.items = (
            ds.items.merge(mapping, left_on="item_id", right_on="new_item_id", how="left")
            .merge(read_movielens_movies(movies).rename(columns={"item_id": "orig_movie_id"}),
                   on="orig_movie_id", how="left")
            .drop(columns=["new_item_id"])
        )
    return ds


def _read_ml100k(root: Path) -> Dataset:
    folder = root / "ml-100k"
    if (folder / "ml-100k.inter").exists():
        ds = read_recbole(folder / "ml-100k.inter", name="ml-100k")
        if "class" in ds.items.columns:  # RecBole's space-separated genres, as labels
            ds.items["genres"] = ds.items["class"].str.split().str.join("|")
        return ds
    return read_movielens(folder, name="ml-100k")  # the unpacked GroupLens archive


def _amazon_reader(filename: str, name: str) -> Callable[[Path], Dataset]:
    def read(root: Path) -> Dataset:
        return read_sequences(root / "amazon" / filename, name=name)

    return read


def _read_scientific(root: Path) -> Dataset:
    # The importer joins Scientific.item2index and Scientific.text (asin, text) itself.
    return read_recbole(root / "amazon-scientific" / "Scientific.train.inter",
                        name="amazon-scientific")


def _read_lastfm(root: Path) -> Dataset:
    """Last.fm HetRec-2011 artists: user-artist pairs, names, tags (``|``-separated)."""
    folder = root / "lastfm-2k"
    pairs = pd.read_csv(folder / "lfm2k_og_ids.inter", sep="\t", dtype=str)
    artists = pd.read_csv(folder / "lfm2k_orig_artists.dat", sep="\t", dtype=str,
                          usecols=["id", "name"]).rename(columns={"id": "item_id",
                                                                  "name": "title"})
    tags = pd.read_csv(folder / "lfm2k_text.tsv", sep="\t", dtype=str)
    tags = pd.DataFrame({"item_id": tags["artistID"],
                         "tags": tags["text"].fillna("").str.replace(",", "|")})
    ds = build_dataset("lastfm-2k", pairs["userID"].to_numpy(), pairs["itemID"].to_numpy(),
                       provenance={"source": str(folder / "lfm2k_og_ids.inter")})
    ds.items = ds.items.merge(artists, on="item_id", how="left").merge(tags, on="item_id",
                                                                       how="left")
    return ds


def _read_microlens_sample(root: Path) -> Dataset:
    """The MicroLens videos present as files, with their titles; no interactions."""
    folder = root / "microlens-sample"
    titles = pd.read_csv(folder / "MicroLens-50k_titles.csv", dtype=str)
    videos = sorted(folder.glob("*.mp4"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
    items = pd.DataFrame({"item_id": [p.stem for p in videos],
                          "video": [str(p.resolve()) for p in videos]})
    items = items.merge(titles.rename(columns={"item": "item_id"}), on="item_id", how="left")
    items.insert(0, "item", np.arange(1, len(items) + 1, dtype=np.int32))
    items["text"] = items["title"]
    empty = pd.DataFrame({"user": np.zeros(0, np.int32), "item": np.zeros(0, np.int32)})
    users = pd.DataFrame({"user": np.zeros(0, np.int32), "user_id": np.zeros(0, str)})
    return Dataset("microlens-sample", empty, items, users, {"source": str(folder)})


def _read_microlens_50k(root: Path) -> Dataset:
    """MicroLens-50k: each user's videos in order, with every video's title as its text
    (the titles are English translations of the Chinese originals)."""
    folder = root / "microlens-50k"
    ds = read_sequences(folder / "MicroLens-50k_pairs.tsv", name="microlens-50k")
    titles = pd.read_csv(folder / "MicroLens-50k_titles.csv", dtype=str)
    ds.items = ds.items.merge(titles.rename(columns={"item": "item_id"}), on="item_id",
                              how="left")
    ds.items["text"] = ds.items["title"]
    return ds


_S3REC = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/master/data/"
_GROUPLENS = "https://files.grouplens.org/datasets/movielens/"

# Checksums: GroupLens publishes MD5s for its archives; for the preprocessed S3Rec
# sequences we record the SHA-256 of the copies we verified against their counts.
NAMED: dict[str, NamedDataset] = {
    d.name: d
    for d in [
        NamedDataset(
            "ml-1m",
            "MovieLens-1M, all 3,706 rated movies, unfiltered (HSTU-paper protocol)",
            ("ml-1m/ml1m_user_sequences_origids.txt",),
            _read_ml1m,
            Download(_GROUPLENS + "ml-1m.zip", "ml-1m.zip",
                     "md5:c4d9eecfca2ab87c1945afe126590906", unzip=True),
            alternatives=("ml-1m/ratings.dat",),
            extras=("ml-1m/movies.dat", "ml-1m/ml1m_extended_movie_tmdb.csv"),
        ),
        NamedDataset(
            "ml-1m-sasrec",
            "MovieLens-1M filtered as in the SASRec paper (3,416 items)",
            ("ml-1m/ml-1m.txt",),
            _read_ml1m_sasrec,
            Download("https://raw.githubusercontent.com/kang205/SASRec/master/data/ml-1m.txt",
                     "ml-1m/ml-1m.txt",
                     "sha256:f8243484b9fdbee0e70f95ec8ff07239f34705928c436f289e26cf44f2152bf3"),
        ),
        NamedDataset(
            "ml-100k",
            "MovieLens-100k with timestamps and titles",
            ("ml-100k/ml-100k.inter",),
            _read_ml100k,
            Download(_GROUPLENS + "ml-100k.zip", "ml-100k.zip",
                     "md5:0e33842e24a9c977be4e0107933c0723", unzip=True),
            alternatives=("ml-100k/u.data",),
        ),
        NamedDataset(
            "amazon-beauty", "Amazon 2014 Beauty, 5-core (S3Rec preprocessing)",
            ("amazon/Beauty.txt",), _amazon_reader("Beauty.txt", "amazon-beauty"),
            Download(_S3REC + "Beauty.txt", "amazon/Beauty.txt",
                     "sha256:226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8"),
        ),
        NamedDataset(
            "amazon-sports", "Amazon 2014 Sports and Outdoors, 5-core (S3Rec preprocessing)",
            ("amazon/Sports_and_Outdoors.txt",),
            _amazon_reader("Sports_and_Outdoors.txt", "amazon-sports"),
            Download(_S3REC + "Sports_and_Outdoors.txt", "amazon/Sports_and_Outdoors.txt",
                     "sha256:2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2"),
        ),
        NamedDataset(
            "amazon-toys", "Amazon 2014 Toys and Games, 5-core (S3Rec preprocessing)",
            ("amazon/Toys_and_Games.txt",), _amazon_reader("Toys_and_Games.txt", "amazon-toys"),
            Download(_S3REC + "Toys_and_Games.txt", "amazon/Toys_and_Games.txt",
                     "sha256:176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f"),
        ),
        NamedDataset(
            "yelp", "Yelp, 5-core (S3Rec preprocessing)",
            ("amazon/Yelp.txt",), _amazon_reader("Yelp.txt", "yelp"),
            Download(_S3REC + "Yelp.txt", "amazon/Yelp.txt",
                     "sha256:724b219106b81dd2349027da997334ddb6da9fe2f152ad6e0d97a93170f7caed"),
        ),
        NamedDataset(
            "amazon-scientific",
            "Amazon 2018 Industrial and Scientific with item text (UniSRec preprocessing)",
            tuple(f"amazon-scientific/Scientific.{p}.inter" for p in ("train", "valid", "test")),
            _read_scientific,
            None,  # UniSRec ships it through a file host with no stable direct link
            extras=("amazon-scientific/Scientific.text", "amazon-scientific/Scientific.item2index"),
        ),
        NamedDataset(
            "lastfm-2k",
            "Last.fm HetRec-2011 user-artist pairs, artist tags, precomputed audio/text vectors",
            ("lastfm-2k/lfm2k_og_ids.inter", "lastfm-2k/lfm2k_orig_artists.dat",
             "lastfm-2k/lfm2k_text.tsv"),
            _read_lastfm,
            None,  # the multimodal features come from a research resource, not GroupLens
            precomputed={
                name: (f"lastfm-2k/lfm2k_{file}.npy", "lastfm-2k/lfm2k_npy_row_to_artistID.tsv",
                       "artistID")
                for name, file in (("vggish", "vggish"), ("whisper", "whisper"),
                                   ("minilm", "all-MiniLM-L6-v2"))
            },
        ),
        NamedDataset(
            "microlens-50k",
            "MicroLens-50k micro-video platform: 50,000 users' videos in order, with titles",
            ("microlens-50k/MicroLens-50k_pairs.tsv", "microlens-50k/MicroLens-50k_titles.csv"),
            _read_microlens_50k,
            None,  # MicroLens is distributed on request by its authors
        ),
        NamedDataset(
            "microlens-sample",
            "MicroLens: three real short videos with titles (a catalog, no interactions)",
            ("microlens-sample/MicroLens-50k_titles.csv",),
            _read_microlens_sample,
            None,  # MicroLens is distributed on request by its authors
            extras=("microlens-sample",),
        ),
    ]
}


def named_dataset(name_or_path: str | Path, format: str | None = None) -> NamedDataset | None:
    """The named dataset ``name_or_path`` stands for, or None for a path. The one rule,
    for every reader of a dataset argument: a name in `NAMED` is the named dataset,
    unless ``format`` says the argument is a file of that format (a file called
    ``ml-100k`` in the working directory, read with ``--format csv``)."""
    return NAMED.get(str(name_or_path)) if format is None else None


# ---- loading, caching, downloading ----------------------------------------------------
def load_dataset(
    name_or_path: str | Path, format: str | None = None, columns: dict[str, str] | None = None,
    repeats: str | None = None,
) -> Dataset:
    """A named dataset (see `NAMED`) or a path to any supported file/folder.

    ``repeats`` says what becomes of consecutive repeated events, the same user and item
    back to back (`settle_repeats`): "drop" or "keep"; None (the default) drops them
    from a path and keeps them in a named dataset, whose published benchmark numbers
    were measured with them (yelp has 3,873, amazon-scientific 141; the others none)."""
    if is_postgres_url(name_or_path):  # no file whose size and time say it changed
        if repeats is not None and repeats not in REPEATS:
            raise ConfigError(f"consecutive repeats {repeats!r}; expected one of "
                              f"{', '.join(REPEATS)} (or None: the dataset's default)")
        return settle_repeats(read_state(str(name_or_path)), repeats or "drop")
    key, sources, build, extra = _source(name_or_path, format, columns, repeats)
    return _cached(key, sources, build, extra)


def dataset_folder(
    name_or_path: str | Path, format: str | None = None, columns: dict[str, str] | None = None,
    repeats: str | None = None,
) -> Path:
    """The cached canonical folder of what `load_dataset` reads, converted first if the
    cache does not hold it, in row groups (`ensure_row_groups`), without reading the
    interactions when it is already there: for readers of a part of it
    (`read_user_block`). The cache must be writable."""
    if is_postgres_url(name_or_path):
        raise DataFormatError(
            f"{redact(str(name_or_path))}: a PostgreSQL user state is read whole by one "
            "process (train without rank_users): its ranks would read it at different "
            "moments, and so different events")
    key, sources, build, extra = _source(name_or_path, format, columns, repeats)
    folder = paths.cache_dir() / key
    stamp = _stamp(sources, extra)
    if not (_current(folder, stamp) and (folder / "manifest.json").exists()):
        build().save(folder)
        (folder / "source.json").write_text(stamp)
    ensure_row_groups(folder)
    return folder


def _source(name_or_path: str | Path, format: str | None,
            columns: dict[str, str] | None, repeats: str | None = None,
            ) -> tuple[str, list[Path], Callable[[], Dataset], object]:
    """Cache key, source files, converter and extra cache key of a dataset name or path.
    The choice about repeats (`load_dataset`) keys the cache: a dataset converted with
    the other one is never served, and one made by a choice other than the default is
    kept beside the default's."""
    if repeats is not None and repeats not in REPEATS:
        raise ConfigError(f"consecutive repeats {repeats!r}; expected one of "
                          f"{', '.join(REPEATS)} (or None: the dataset's default)")
    key = str(name_or_path)
    spec = named_dataset(key, format)
    if spec is not None:
        root = paths.data_dir()
        if not spec.present(root):
            _download(spec, root)
        sources = [root / f for f in spec.files + spec.alternatives + spec.extras
                   if (root / f).exists()]
        policy = repeats or "keep"
        why = "" if repeats else f"the published {spec.name} benchmark has them"
        return (spec.name if policy == "keep" else f"{spec.name}-{policy}-repeats", sources,
                lambda: settle_repeats(spec.reader(root), policy, why),
                None if policy == "keep" else {"consecutive_repeats": policy})
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise DatasetUnavailable(
            f"{key!r} is neither a named dataset ({', '.join(NAMED)}) nor an existing path"
        )
    policy = repeats or "drop"
    key = _cache_key(path)
    # An SQLite file in WAL mode (a user state a service is writing to) takes new
    # commits into its -wal file and leaves the main file alone until a checkpoint, so
    # the -wal file keys the cache too.
    # (A folder such as "." has no name to put "-wal" after: only a file is looked at.)
    wal = path.with_name(f"{path.name}-wal") if path.is_file() else None
    sources = [path, wal] if wal is not None and wal.is_file() else [path]
    return (key if policy == "drop" else f"{key}-{policy}-repeats", sources,
            lambda: import_path(path, format, columns, policy),
            {"format": format, "columns": columns, "consecutive_repeats": policy})


def _cache_key(path: Path) -> str:
    """The cache folder name of a dataset read from ``path``: its name, made safe, plus
    a digest of the absolute path. Never the path itself: ``-d .`` or ``-d ..`` would
    then name the cache directory or its parent, which saving replaces."""
    absolute = path.resolve()
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", absolute.name).strip("_") or "root"
    return f"{name}-{hashlib.sha256(str(absolute).encode()).hexdigest()[:12]}"


def _cached(
    key: str, sources: list[Path], build: Callable[[], Dataset], extra: object = None
) -> Dataset:
    """Reuse the converted dataset while the sources' sizes and mtimes are unchanged."""
    stamp = _stamp(sources, extra)
    folder = paths.cache_dir() / key
    if _current(folder, stamp):
        try:
            ds = Dataset.read(folder)
            report_repeats(ds)
            return ds
        except DataFormatError as err:  # damaged on disk: convert again, as if missing
            log.warning("cached dataset %s is unreadable, converting again: %s", key, err)
    ds = build()
    try:
        ds.save(folder)
        (folder / "source.json").write_text(stamp)
    except OSError as err:  # a read-only cache only costs speed
        log.warning("could not cache dataset %s in %s: %s", key, folder, err)
    return ds


def _current(folder: Path, stamp: str) -> bool:
    """Whether the cached ``folder`` was converted from the sources ``stamp`` describes."""
    stamp_file = folder / "source.json"
    return stamp_file.exists() and stamp_file.read_text() == stamp


def _stamp(sources: list[Path], extra: object) -> str:
    return json.dumps({"sources": [_fingerprint(p) for p in sources], "extra": extra,
                       "format_version": 1}, sort_keys=True)


def _fingerprint(path: Path) -> list[object]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _download(spec: NamedDataset, root: Path) -> None:
    if spec.download is None:
        raise DatasetUnavailable(
            f"dataset {spec.name!r} is not in {root} (expected {', '.join(spec.files)}) and "
            "has no automatic download; place the files there, or set MODREC_DATA_DIR to "
            "the folder that holds them"
        )
    dl = spec.download
    target = root / dl.filename
    log.info("downloading %s from %s", spec.name, dl.url)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        with urllib.request.urlopen(dl.url, timeout=60) as response, tmp.open("wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except OSError as err:
        raise DatasetUnavailable(
            f"dataset {spec.name!r} is not in {root} (expected {spec.files[0]}) and the "
            f"download from {dl.url} failed ({err}). Set MODREC_DATA_DIR to a folder that "
            "holds it, or run where the publisher can be reached."
        ) from err
    algorithm, expected = dl.digest.split(":")
    actual = hashlib.new(algorithm, tmp.read_bytes()).hexdigest()
    if actual != expected:
        tmp.unlink()
        raise DatasetUnavailable(
            f"download of {spec.name!r} from {dl.url} has {algorithm} {actual}, expected "
            f"{expected}; the file was discarded"
        )
    tmp.rename(target)
    if dl.unzip:
        with zipfile.ZipFile(target) as archive:
            archive.extractall(root)
    if not spec.present(root):
        raise DataFormatError(
            f"downloaded {dl.url} but {', '.join(spec.files + spec.alternatives)} is still "
            f"missing under {root}"
        )


def list_datasets() -> list[dict[str, object]]:
    root = paths.data_dir()
    return [
        {"name": d.name, "present": d.present(root), "description": d.description}
        for d in NAMED.values()
    ]
