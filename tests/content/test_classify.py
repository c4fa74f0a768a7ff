"""Classification on real data: ml-100k genres from titles, in the three modes."""

from __future__ import annotations

import pytest


def test_classify_genres_from_titles_beats_the_majority_label(ml100k, ml100k_store):
    from modrec.content.classify import classify

    trained = classify(ml100k, "genres", ["text"], "trained", ml100k_store, head="linear",
                       min_count=20)
    knn = classify(ml100k, "genres", ["text"], "knn", ml100k_store, min_count=20)
    zero = classify(ml100k, "genres", ["text"], "zero-shot", ml100k_store, min_count=20,
                    template="a {label} movie")
    # Titles alone are thin evidence. References: always predicting Drama, the most
    # frequent genre, scores micro-F1 about 0.3; a random ranking's mAP is the mean
    # genre frequency.
    from modrec.content.classify import label_matrix

    chance = label_matrix(ml100k, "genres", min_count=20).targets.mean(0).mean()
    assert trained["micro_f1"] > 0.4 and trained["map"] > 2 * chance
    assert knn["map"] > 1.5 * chance and zero["map"] > 1.2 * chance
    with pytest.raises(ValueError, match="reads the label column"):
        classify(ml100k, "genres", ["tags:genres"], "trained", ml100k_store)  # spec form
