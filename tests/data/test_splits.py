from __future__ import annotations

import numpy as np

from modrec.data import leave_one_out, temporal_split


def test_leave_one_out_partitions_each_sequence(ml100k) -> None:
    seqs = ml100k.sequences()
    split = leave_one_out(ml100k)
    assert len(split.valid) == len(split.test) == ml100k.num_users  # all have >= 20 ratings
    for row, user in enumerate(split.test.users[:200]):
        full = seqs[user]
        assert np.array_equal(split.train[user], full[:-2])
        assert split.valid.targets[row] == full[-2]
        assert split.test.targets[row] == full[-1]
        # validation sees train; test sees train + validation
        assert np.array_equal(split.valid.histories[row], full[:-2])
        assert np.array_equal(split.test.histories[row], full[:-1])
    assert split.train.items.size == len(ml100k.interactions) - 2 * len(split.test)


def test_short_users_stay_in_training() -> None:
    from modrec.data.dataset import build_dataset

    ds = build_dataset("tiny", np.array([1, 1, 2, 2, 2]), np.array([5, 6, 5, 6, 7]))
    split = leave_one_out(ds)
    assert split.test.users.tolist() == [1]  # user "2" (index 1) has three items
    assert split.train[0].tolist() == [1, 2]  # user "1" keeps both items for training


def test_temporal_split_respects_time(ml100k) -> None:
    split = temporal_split(ml100k)
    ts = ml100k.interactions["timestamp"].to_numpy()
    cut = np.quantile(ts, 0.8)
    seqs = ml100k.sequences()
    user_ts = [ts[seqs.offsets[u]:seqs.offsets[u + 1]] for u in range(len(seqs))]
    for u in range(len(seqs)):
        assert (user_ts[u][: len(split.train[u])] < cut).all()
    assert len(split.test) > 0 and len(split.valid) > 0
    for row, u in enumerate(split.test.users):
        n = len(split.test.histories[row])
        assert user_ts[u][n] >= np.quantile(ts, 0.9)
    assert "temporal" in split.protocol


def test_splits_carry_each_items_timestamp(ml100k) -> None:
    """Histories keep when each item happened, aligned item for item."""
    seqs = ml100k.sequences()
    split = leave_one_out(ml100k)
    for row in (0, 5, len(split.test) - 1):
        user = int(split.test.users[row])
        np.testing.assert_array_equal(split.test.histories.times_of(row), seqs.times_of(user)[:-1])
        np.testing.assert_array_equal(split.train.times_of(user), seqs.times_of(user)[:-2])
    assert (np.diff(split.train.times_of(0)) >= 0).all()


def test_leave_one_out_without_validation_trains_on_the_validation_item(ml100k) -> None:
    from modrec.data.splits import leave_one_out_without_validation

    loo, paper = leave_one_out(ml100k), leave_one_out_without_validation(ml100k)
    assert paper.valid is None
    np.testing.assert_array_equal(paper.test.targets, loo.test.targets)
    assert (paper.train.lengths() == loo.train.lengths() + 1).all()
    # the added training item is exactly the validation target
    np.testing.assert_array_equal(paper.train.items[paper.train.offsets[1:] - 1][loo.valid.users],
                                  loo.valid.targets)


def test_keep_last_cuts_each_history_to_its_last_events(ml100k) -> None:
    """data.keep_last (the MicroLens protocol: 13): each user's last N events, the split
    says so, and cutting a cut dataset (a run's snapshot) changes nothing."""
    from modrec.data.splits import cut_and_split

    cut, split = cut_and_split(ml100k, "loo", 13)
    full = ml100k.sequences()
    for user in range(0, ml100k.num_users, 50):
        assert np.array_equal(cut.sequences()[user], full[user][-13:])
    assert len(cut.interactions) == 13 * ml100k.num_users  # every user has >= 20 ratings
    assert split.protocol.endswith("each user's last 13 events")
    assert cut.provenance["keep_last"] == {"n": 13, "dropped": 100_000 - 13 * 943}
    again, split_again = cut_and_split(cut, "loo", 13)
    assert again.interactions.equals(cut.interactions)
    assert np.array_equal(split_again.test.targets, split.test.targets)


def test_keep_last_below_three_is_refused(ml100k) -> None:
    import pytest

    from modrec.config import build_config
    from modrec.data.splits import cut_and_split
    from modrec.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 3 events"):
        cut_and_split(ml100k, "loo", 2)
    with pytest.raises(ConfigError, match="keep_last"):
        build_config("ml-100k", "sasrec", overrides=["data.keep_last=2"])
