"""Text search on real data: queries find their titles, genre queries beat chance."""

from __future__ import annotations

import numpy as np


def test_search_ranks_relevant_items_first(ml100k, ml100k_store):
    from modrec.content.search import TextSearch, search_map

    hits = TextSearch(ml100k, ml100k_store).search("star wars", k=5)
    assert any("Star Wars" in h["title"] for h in hits[:2])
    result = search_map(ml100k, "genres", "a {label} movie", ml100k_store)
    base_rate = np.mean([ml100k.items["genres"].str.contains(g, regex=False).mean()
                         for g in result["ap"]])
    assert result["map"] > 1.5 * base_rate  # better than a random ranking
