"""The tag encoder on real genres: one multi-hot column per genre."""

from __future__ import annotations

import numpy as np


def test_tags_are_multi_hot(ml100k, ml100k_store):
    tags = np.asarray(ml100k_store.matrix("tags-genres"))
    assert tags.shape[1] == 19  # the 19 ml-100k genres, unknown included
    assert tags[1].sum() == 3  # Toy Story: Animation, Children's, Comedy
