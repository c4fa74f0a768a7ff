"""Content item towers on cold items: a model trained with the store's text vectors
(`content_matrix`) ranks items it never saw in training."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_content_tower_recommends_cold_items(ml100k_store, tmp_path, monkeypatch):
    """Withheld items: ID-only can only guess; ID+content ranks them from their titles."""
    from modrec.config import build_config
    from modrec.runs import load_run
    from modrec.train import train

    monkeypatch.setenv("MODREC_EMBEDDINGS_DIR", str(ml100k_store.folder.parent))
    results = {}
    for tower in ("id", "id+content"):
        config = build_config("ml-100k", "sasrec", None, [
            "data.split=cold-items", f"model.item_tower={tower}", 'model.encoders=["text"]',
            "model.max_len=50", "train.epochs=15", "train.patience=15",
            "loss.num_negatives=64"])
        out = train(config, tmp_path / tower, progress=False)
        results[tower] = json.loads((out / "results.json").read_text())
    assert results["id"]["cold"]["users"] > 50 and results["id"]["warm"]["users"] > 800
    cold = {t: r["cold"]["hr@200"] for t, r in results.items()}
    chance = 200 / 1682
    assert cold["id"] < 2 * chance, cold  # a guess
    assert cold["id+content"] > 2 * max(cold["id"], chance), cold
    # The run folder alone restores the content tower (its matrix travels in model.pt).
    run = load_run(tmp_path / "id+content")
    assert run.model.item_tower.mode == "id+content"
    assert run.model.item_tower.content.abs().sum() > 0
