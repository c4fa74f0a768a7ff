"""Train / validation / test splits over users' sequences.

A split is what the training loop and the evaluator agree on: the sequences to train
on, and for validation and test, each evaluated user's history (the model's input and
the items masked out of its ranking) plus the one target item to find.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from modrec.data.dataset import Dataset, Sequences, cut_to_last
from modrec.errors import ConfigError, UsageError


@dataclass(frozen=True)
class EvalSet:
    """One evaluation target per listed user.

    ``histories[i]`` is everything user ``users[i]`` did before ``targets[i]``, oldest
    first: the model reads (the end of) it, and its items are masked out of the
    ranking, as in the HSTU repository's protocol.
    """

    users: np.ndarray  # int64 [M]
    histories: Sequences  # M sequences
    targets: np.ndarray  # int64 [M], item indices 1..N

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, keep: np.ndarray) -> EvalSet:
        """The evaluation rows where the boolean ``keep`` is True."""
        rows = np.flatnonzero(keep)
        return EvalSet(self.users[rows], _truncate(self.histories,
                                                   self.histories.lengths(), rows),
                       self.targets[rows])


@dataclass(frozen=True)
class Split:
    train: Sequences  # per user (all users, some possibly empty)
    valid: EvalSet | None  # None: no validation hold-out, train a fixed number of epochs
    test: EvalSet
    num_items: int
    protocol: str  # written next to every number computed on this split
    # Items withheld from training entirely (cold-start evaluation), (N + 1,) bool.
    cold_items: np.ndarray | None = None

    def known_items(self) -> np.ndarray:
        """``(N + 1,)`` bool: the items that occur in the training sequences."""
        known = np.zeros(self.num_items + 1, dtype=bool)
        known[self.train.items] = True
        return known


def leave_one_out(ds: Dataset) -> Split:
    """Last item = test, second-to-last = validation, the rest = training.

    Validation sees the training items as history; test sees training + validation.
    Users with fewer than three interactions keep everything in training.
    """
    seqs = ds.sequences()
    lengths = seqs.lengths()
    held = lengths >= 3
    # Training drops the last two items of every evaluated user.
    cut = lengths - np.where(held, 2, 0)
    train = _truncate(seqs, cut)
    users = np.flatnonzero(held)
    ends = seqs.offsets[1:][held]
    valid_targets = seqs.items[ends - 2].astype(np.int64)
    test_targets = seqs.items[ends - 1].astype(np.int64)
    valid = EvalSet(users, _truncate(seqs, lengths - 2, users), valid_targets)
    test = EvalSet(users, _truncate(seqs, lengths - 1, users), test_targets)
    return Split(train, valid, test, ds.num_items, "leave-one-out, full ranking, history masked")


def temporal_split(ds: Dataset, valid_quantile: float = 0.8, test_quantile: float = 0.9) -> Split:
    """A global temporal split: interactions before the ``valid_quantile`` time are
    training; each user's first interaction in [valid, test) is a validation target
    and the first at or after the test time is a test target, with everything before
    it as history. Requires timestamps."""
    if not ds.has_timestamps:
        raise UsageError(
            f"dataset {ds.name!r} has no timestamps; a temporal split needs them "
            "(use the leave-one-out split instead)"
        )
    ts = ds.interactions["timestamp"].to_numpy()
    t_valid, t_test = np.quantile(ts, [valid_quantile, test_quantile])
    seqs = ds.sequences()
    user_of = np.repeat(np.arange(len(seqs)), seqs.lengths())
    before_valid = np.bincount(user_of[ts < t_valid], minlength=len(seqs))
    before_test = np.bincount(user_of[ts < t_test], minlength=len(seqs))
    train = _truncate(seqs, before_valid)
    lengths = seqs.lengths()

    def targets_after(count_before: np.ndarray, limit: float) -> EvalSet:
        # The user's next interaction after the cut-off, if it is before `limit`.
        has_next = count_before < lengths
        position = seqs.offsets[:-1] + count_before
        in_window = has_next & (ts[np.minimum(position, len(ts) - 1)] < limit)
        users = np.flatnonzero(in_window & (count_before > 0))
        return EvalSet(users, _truncate(seqs, count_before, users),
                       seqs.items[position[users]].astype(np.int64))

    valid = targets_after(before_valid, t_test)
    test = targets_after(before_test, np.inf)
    protocol = (
        f"global temporal split (validation from the {valid_quantile:.0%} time quantile, "
        f"test from {test_quantile:.0%}; first next item per user), full ranking, "
        "history masked"
    )
    return Split(train, valid, test, ds.num_items, protocol)


def _truncate(seqs: Sequences, keep: np.ndarray, users: np.ndarray | None = None) -> Sequences:
    """The first ``keep[u]`` items of each user's sequence (of ``users`` only, if given)."""
    starts = seqs.offsets[:-1]
    if users is not None:
        starts, keep = starts[users], keep[users]
    keep = keep.astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
    # Index of every kept element: start of its user + its position within the user.
    position = np.arange(offsets[-1]) - np.repeat(offsets[:-1], keep)
    kept = np.repeat(starts, keep) + position
    return Sequences(offsets, seqs.items[kept], None if seqs.times is None else seqs.times[kept])


def cold_items_split(ds: Dataset, fraction: float = 0.1, seed: int = 0) -> Split:
    """Leave-one-out, with a random ``fraction`` of the items removed from training
    entirely: they never occur in a training sequence (neither as input nor target),
    so a model meets them first at evaluation. Histories are left as they happened.
    Test targets split into warm and cold by `Split.cold_items`."""
    loo = leave_one_out(ds)
    rng = np.random.default_rng(seed)
    cold = np.zeros(ds.num_items + 1, dtype=bool)
    cold[rng.choice(np.arange(1, ds.num_items + 1), int(round(fraction * ds.num_items)),
                    replace=False)] = True
    keep = ~cold[loo.train.items]
    users_of = np.repeat(np.arange(len(loo.train)), loo.train.lengths())
    lengths = np.bincount(users_of[keep], minlength=len(loo.train))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    train = Sequences(offsets, loo.train.items[keep],
                      None if loo.train.times is None else loo.train.times[keep])
    protocol = (f"leave-one-out with {fraction:.0%} of items (seed {seed}) withheld from "
                "training; full ranking over all items, history masked")
    return Split(train, loo.valid, loo.test, ds.num_items, protocol, cold)


def leave_one_out_without_validation(ds: Dataset) -> Split:
    """Last item = test, everything before it = training, no validation set: the HSTU
    repository's protocol, which trains a fixed number of epochs and reports the last.
    For reproducing published numbers; choose settings with ``loo``, whose validation
    target is held out of training."""
    seqs = ds.sequences()
    lengths = seqs.lengths()
    # Users with fewer than three items are not evaluated and keep everything (as in loo).
    train = _truncate(seqs, lengths - np.where(lengths >= 3, 1, 0))
    return Split(train, None, leave_one_out(ds).test, ds.num_items,
                 "leave-one-out without validation (training keeps the second-to-last "
                 "item; fixed epochs, last one reported), full ranking, history masked")


SPLITS = {"loo": leave_one_out, "temporal": temporal_split, "cold-items": cold_items_split,
          "loo-no-valid": leave_one_out_without_validation}


def check_split(split: Split, ds: Dataset, name: str, trained: bool = True) -> None:
    """Refuse a split that leaves nothing to train on or to evaluate, before any
    training, saying what the data lacks and what to do (otherwise training fails
    later with an error about empty arrays). ``trained``: the model learns from next-item
    pairs (a fitted one, popularity, only counts items)."""
    lengths = ds.sequences().lengths()
    users = len(lengths)
    if name == "temporal":
        more = ("Use a file with more users and events spread over time, or --split loo "
                "(each user's own last events are the targets).")
        for part, evalset, window in (
                ("validation", split.valid, "before the 80% time quantile and their next "
                 "one before the 90% quantile"),
                ("test", split.test, "before the 90% time quantile and another after it")):
            if evalset is not None and len(evalset) == 0:
                raise UsageError(
                    f"after the temporal split no user has a {part} target: a user needs "
                    f"an event {window}, and none of the {users} users of {ds.name!r} "
                    f"has. {more}")
    else:
        more = "Use a file with more events per user."
        if len(split.test) == 0:
            short = int((lengths < 3).sum())
            targets = ("a test target: every user needs at least 3 events (the last is the "
                       "test target, and the rest are trained on" if split.valid is None
                       else "a validation target: every user needs at least 3 events (the "
                       "last is the test target, the one before it the validation target, "
                       "the rest are trained on")
            raise UsageError(
                f"after the {name} split no user has {targets}); {short} of the {users} "
                f"users of {ds.name!r} have fewer. {more}")
    if trained and not (split.train.lengths() >= 2).any():
        kept = ("the events before the 80% time quantile" if name == "temporal" else
                "all but each user's last two events")
        raise UsageError(
            f"after the {name} split no user of {ds.name!r} has two or more events to "
            f"train on (training keeps {kept}, and a model learns each next item from the "
            f"ones before it). {more}")


def cut_and_split(ds: Dataset, name: str, keep_last: int | None = None) -> tuple[Dataset, Split]:
    """The dataset as a run trains on it (each user's last ``keep_last`` events where
    set: ``data.keep_last``) and its split, whose protocol says so. Cutting a dataset cut
    already (a run's snapshot) changes nothing, so a loaded run recomputes the same split."""
    if keep_last is None:
        return ds, make_split(ds, name)
    ds = cut_to_last(ds, keep_last)
    split = make_split(ds, name)
    return ds, replace(split, protocol=f"{split.protocol}, each user's last {keep_last} events")


def make_split(ds: Dataset, name: str) -> Split:
    if name not in SPLITS:
        raise ConfigError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
    return SPLITS[name](ds)
