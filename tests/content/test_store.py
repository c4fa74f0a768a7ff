"""The embedding store's guarantees on real data: incremental, resumable writes that
flag failures, re-alignment by item id, clear errors; and the row normalisation that
every reader of its matrices shares (`normalize_rows`, `content_matrix`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modrec.content import EmbeddingStore, EncodeError, embed
from modrec.content.store import content_matrix, normalize_rows


class FlakyEncoder:
    """Encodes text lengths; fails on chosen inputs, or stops the job after a count."""

    name, dim, version, reads = "flaky", 2, "1", "text"

    def __init__(self, bad: set[str] = frozenset(), stop_after: int | None = None) -> None:
        self.bad, self.stop_after, self.calls = bad, stop_after, 0

    def encode(self, batch: list) -> np.ndarray:
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt  # an interruption, not an item's fault
        if any(x in self.bad for x in batch):
            raise EncodeError("bad input")
        return np.array([[len(x), 1.0] for x in batch], np.float32)


def test_store_is_incremental_resumable_and_flags_failures(ml100k, tmp_path, monkeypatch):
    import modrec.content.embed_job as embed_job

    titles = ml100k.items["title"].tolist()
    store = EmbeddingStore.for_dataset(ml100k, tmp_path)
    # 1. The job is interrupted after three batches: what was committed survives.
    monkeypatch.setattr(embed_job, "build_encoder", lambda *a, **k: FlakyEncoder(stop_after=3))
    with pytest.raises(KeyboardInterrupt):
        embed(ml100k, ["flaky"], store, batch_size=100, progress=False)
    reopened = EmbeddingStore.for_dataset(ml100k, tmp_path)
    assert reopened.done("flaky").sum() == 300
    assert len(reopened.missing("flaky")) == ml100k.num_items - 300
    # 2. Resume: only the missing items are encoded; one bad title is flagged, not fatal.
    bad = titles[500]
    monkeypatch.setattr(embed_job, "build_encoder", lambda *a, **k: FlakyEncoder({bad}))
    [report] = embed(ml100k, ["flaky"], reopened, batch_size=100, progress=False)
    assert (report.already, report.encoded, report.failures) == (300, ml100k.num_items - 301, 1)
    assert report.failed_items == [ml100k.items["item_id"].iloc[500]]
    matrix = reopened.matrix("flaky")
    assert matrix[501].tolist() == [0.0, 0.0] and reopened.failed("flaky")[501]
    assert matrix[1].tolist() == [len(titles[0]), 1.0]
    # 3. Nothing left to do.
    [again] = embed(ml100k, ["flaky"], reopened, progress=False)
    assert again.encoded == 0 and again.already == ml100k.num_items


def test_store_realigns_rows_by_item_id_when_the_catalog_changes(tmp_path):
    store = EmbeddingStore(tmp_path, ["a", "b", "c"])
    store.prepare("x", 1, "v1", "text")
    store.write("x", np.array([1, 2, 3]), np.array([[1.0], [2.0], [3.0]]))
    grown = EmbeddingStore(tmp_path, ["0", "a", "c", "d"])  # re-indexed, b gone, two new
    assert grown.matrix("x")[:, 0].tolist() == [0.0, 0.0, 1.0, 3.0, 0.0]
    assert grown.missing("x").tolist() == [1, 4]
    assert json.loads((tmp_path / "manifest.json").read_text())["encoders"]["x"]["ids"] \
        == grown.digest
    # A new encoder version starts afresh: old vectors are not comparable.
    grown.prepare("x", 1, "v2", "text")
    assert len(grown.missing("x")) == 4


def test_store_error_names_the_missing_encoder(ml100k, tmp_path):
    with pytest.raises(KeyError, match="modrec embed --encoder video"):
        EmbeddingStore.for_dataset(ml100k, tmp_path).matrix("video")


def test_normalize_rows_gives_unit_rows_and_keeps_zero_rows_zero():
    matrix = np.array([[3.0, 4.0], [0.0, 0.0], [1e-12, 0.0]], np.float32)
    rows = normalize_rows(matrix)
    assert rows.dtype == np.float32 and np.isfinite(rows).all()
    assert np.allclose(rows[0], [0.6, 0.8]) and rows[1].tolist() == [0.0, 0.0]
    assert np.allclose(rows[2], [1e-4, 0.0])  # below eps: divided by eps, not blown up
    assert matrix[0].tolist() == [3.0, 4.0]  # a new array: the input is untouched
    assert np.allclose(normalize_rows(matrix, eps=1e-20)[2], [1.0, 0.0])


def test_content_matrix_normalises_each_encoder_block_and_zeroes_failures(tmp_path):
    store = EmbeddingStore(tmp_path, ["a", "b", "c"])
    store.prepare("x", 2, "1", "text")
    store.write("x", np.array([1, 2, 3]), np.array([[3.0, 4.0], [2.0, 0.0], [5.0, 5.0]]),
                failed=np.array([False, False, True]))
    store.prepare("y", 1, "1", "tags")
    store.write("y", np.array([1, 2]), np.array([[2.0], [-0.5]]))  # c never encoded
    matrix = content_matrix(store, ["x", "y"])
    assert matrix.dtype == np.float32 and matrix.shape == (4, 3)
    assert np.allclose(matrix, [[0, 0, 0], [0.6, 0.8, 1], [1, 0, -1], [0, 0, 0]])


def test_the_store_and_the_computed_columns_check_their_manifests_alike(tmp_path):
    """One check (store.read_manifest) for both manifests: a damaged one is a StoreError
    naming the file, what is wrong and the cure; reading a store's entries
    (EmbeddingStore.stored) writes nothing."""
    from modrec.content.columns import ItemColumns
    from modrec.content.store import StoreError

    (tmp_path / "columns").mkdir()
    (tmp_path / "columns" / "manifest.json").write_text('{"columns": {"transcript": {}}}')
    with pytest.raises(StoreError, match=r"columns/manifest.json is not an item-columns "
                       r"manifest \(a column entry lacks its file\); delete it and run "
                       r"`modrec transcribe` again"):
        ItemColumns(tmp_path / "columns").names()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.json").write_text('{"encoders": {"text": {"dim": 3}}}')
    with pytest.raises(StoreError, match=r"store/manifest.json is not an embedding store "
                       r"manifest \(an encoder entry lacks dim, dtype, version, reads or "
                       r"ids\); delete the folder .*store to encode afresh"):
        EmbeddingStore.stored(tmp_path / "store")
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["manifest.json"]
    assert EmbeddingStore.stored(tmp_path / "elsewhere") == {}
