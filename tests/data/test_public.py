"""Named datasets when the files are missing: the download path, offline and online."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import zipfile
from pathlib import Path

import pytest

from modrec.data import DatasetUnavailable, load_dataset, public


def test_offline_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODREC_DATA_DIR", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(public.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetUnavailable, match="MODREC_DATA_DIR") as err:
        load_dataset("ml-1m")
    assert "files.grouplens.org" in str(err.value)


def _serve(monkeypatch: pytest.MonkeyPatch, payload: bytes) -> None:
    monkeypatch.setattr(public.urllib.request, "urlopen",
                        lambda *a, **k: io.BytesIO(payload))


def test_download_is_verified_and_unpacked(tmp_path: Path, data_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A GroupLens-style archive built from the real ml-100k files goes through the
    real download code: checksum, unzip, import."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("u.data", "u.item"):
            archive.write(data_dir / "ml-100k" / name, f"ml-100k/{name}")
    payload = buffer.getvalue()
    spec = public.NAMED["ml-100k"]
    digest = "md5:" + hashlib.md5(payload).hexdigest()
    monkeypatch.setitem(public.NAMED, "ml-100k", public.NamedDataset(
        spec.name, spec.description, spec.files, spec.reader,
        public.Download(spec.download.url, spec.download.filename, digest, unzip=True),
        spec.alternatives))
    monkeypatch.setenv("MODREC_DATA_DIR", str(tmp_path))
    _serve(monkeypatch, payload)
    ds = load_dataset("ml-100k")
    assert len(ds.interactions) == 100_000 and (tmp_path / "ml-100k" / "u.data").exists()


def test_checksum_mismatch_discards_the_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODREC_DATA_DIR", str(tmp_path))
    _serve(monkeypatch, b"not the archive")
    with pytest.raises(DatasetUnavailable, match="expected c4d9eecfca2ab87c1945afe126590906"):
        load_dataset("ml-1m")
    assert not any(tmp_path.rglob("*.zip*"))


def test_no_download_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODREC_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetUnavailable, match="no automatic download"):
        load_dataset("amazon-scientific")


def test_a_name_is_the_named_dataset_unless_a_format_says_it_is_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one rule every reader of a dataset argument follows (`public.named_dataset`):
    with --format, a file in the working directory called like a named dataset is read."""
    from modrec.config import absolute_dataset

    assert public.named_dataset("ml-100k") is public.NAMED["ml-100k"]
    assert public.named_dataset("ml-100k", "csv") is None
    assert public.named_dataset("no-such-set") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ml-100k").write_text("user,item,timestamp\n1,1,1\n1,2,2\n")
    assert absolute_dataset("ml-100k") == "ml-100k"
    assert absolute_dataset("ml-100k", "csv") == str(tmp_path / "ml-100k")
