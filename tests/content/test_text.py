"""The text encoder on real titles: MiniLM vectors put similar titles together."""

from __future__ import annotations

import numpy as np


def test_text_vectors_put_similar_titles_together(ml100k, ml100k_store):
    text = np.asarray(ml100k_store.matrix("text"))
    assert text.shape == (ml100k.num_items + 1, 384)
    assert np.allclose(np.linalg.norm(text[1:], axis=1), 1, atol=1e-3)
    index = {t: i + 1 for i, t in enumerate(ml100k.items["title"])}
    star_wars = text[index["Star Wars"]]
    assert star_wars @ text[index["Return of the Jedi"]] > star_wars @ text[index["Fargo"]]
