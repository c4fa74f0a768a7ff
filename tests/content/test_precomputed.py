"""Precomputed vectors as encoders: the matrices a dataset ships (lastfm-2k's VGGish and
Whisper) and the item vectors a trained run learned (``run:<folder>``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modrec.content import EmbeddingStore, embed
from modrec.data import load_dataset


def test_lastfm_precomputed_vectors_load_as_an_encoder(tmp_path):
    ds = load_dataset("lastfm-2k")
    store = EmbeddingStore.for_dataset(ds, tmp_path)
    reports = embed(ds, ["vggish", "whisper"], store, progress=False)
    assert [(r.dim, r.failures) for r in reports] == [(128, 0), (512, 0)]
    raw = np.load(Path(ds.provenance["source"]).parent / "lfm2k_vggish.npy")
    rows = {a: r for r, a in enumerate(
        np.loadtxt(Path(ds.provenance["source"]).parent / "lfm2k_npy_row_to_artistID.tsv",
                   skiprows=1, dtype=int)[:, 1])}
    first = int(ds.items["item_id"].iloc[0])
    assert np.allclose(store.matrix("vggish")[1], raw[rows[first]], atol=1e-5)


def test_a_runs_learned_item_vectors_become_an_encoder(ml100k, tmp_path):
    """What the run scores items with, read through the run's owner: items it never
    trained on have no vector and are flagged, not filled with untrained rows."""
    from modrec.config import build_config
    from modrec.runs import load_run
    from modrec.train import train

    run = train(build_config("ml-100k", "sasrec", None, ["train.epochs=1", "model.max_len=20"]),
                tmp_path / "run", progress=False)
    store = EmbeddingStore.for_dataset(ml100k, tmp_path / "store")
    [report] = embed(ml100k, [f"run:{run}"], store, progress=False)
    loaded = load_run(run)
    known = loaded.known
    assert report.dim == 50 and report.failures == int((~known[1:]).sum()) > 0
    assert np.array_equal(store.failed(report.encoder)[1:], ~known[1:])
    vectors = loaded.item_vectors()
    assert np.allclose(store.matrix(report.encoder)[known], vectors[known], atol=1e-6)
    with pytest.raises(ValueError, match="trained on 'ml-100k', not 'lastfm-2k'"):
        embed(load_dataset("lastfm-2k"), [f"run:{run}"], EmbeddingStore(tmp_path / "x", ["1"]))
