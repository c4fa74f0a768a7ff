"""The annotation job on ml-100k with a scripted language model (no runtime needed):
every method's plumbing, resuming after a kill, a rerun that asks nothing, few-shot
examples drawn only from the allowed pool, and `classify --mode llm` evaluated like
the other modes (an oracle model must score perfectly)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from modrec.content.annotate import (
    AnnotationFile,
    LabelPrompting,
    annotate_labels,
    grade_relevance,
    item_texts,
    relevance_pairs,
    sample_items,
)
from modrec.content.classify import classify, label_matrix
from modrec.content.encoders.tags import split_tags


class Oracle:
    """Knows every item's labels from its text; counts what it is asked."""

    spec = fingerprint = "fake:oracle"

    def __init__(self, dataset, field: str = "genres", stop_after: int | None = None) -> None:
        texts = item_texts(dataset)
        column = dataset.items.set_index("item")[field]
        self.truth = {texts[i]: set(split_tags(column[i])) for i in texts}
        self.prompts: list[list[dict[str, str]]] = []
        self.stop_after = stop_after

    def _labels(self, messages) -> set[str]:
        if self.stop_after is not None and len(self.prompts) >= self.stop_after:
            raise KeyboardInterrupt  # as a user's Ctrl-C, mid-job
        self.prompts.append(messages)
        text = re.findall(r"Item: (.*)", messages[1]["content"])[-1]  # the item, not examples
        return self.truth[text]

    def score(self, messages, options):
        labels = self._labels(messages)
        if options == ["yes", "no"]:  # the label is the prefill "LABEL:"
            yes = messages[-1]["content"].rstrip(":") in labels
            return np.log([0.9, 0.1] if yes else [0.1, 0.9])
        return np.log([0.9 if o in labels else 0.01 for o in options])

    def complete(self, messages, schema=None, max_tokens=256):
        return json.dumps({"labels": sorted(self._labels(messages))})


def _items(dataset, n: int) -> np.ndarray:
    return label_matrix(dataset, "genres", min_count=20).items[:n]


@pytest.mark.parametrize("method", ["yesno", "choice", "json"])
def test_every_method_reads_the_oracle(ml100k, tmp_path: Path, method: str):
    labels = label_matrix(ml100k, "genres", min_count=20).labels
    items = _items(ml100k, 6)
    oracle = Oracle(ml100k)
    scores, report = annotate_labels(ml100k, "genres", labels, items, LabelPrompting(
        oracle, method=method, out=tmp_path / "a.jsonl", progress=False))
    truth = label_matrix(ml100k, "genres", min_count=20).targets[:6]
    assert scores.shape == (6, len(labels)) and report.asked == 6
    assert (scores.argmax(1) == (truth * scores).argmax(1)).all()  # the top label is true
    if method != "choice":  # independent per label: exactly the true ones score high
        np.testing.assert_array_equal(scores > 0.5, truth > 0)
    asked = {"yesno": 6 * len(labels), "choice": 6, "json": 6}[method]
    assert len(oracle.prompts) == asked


def test_a_killed_job_resumes_and_a_rerun_asks_nothing(ml100k, tmp_path: Path):
    labels = label_matrix(ml100k, "genres", min_count=20).labels
    items, out = _items(ml100k, 8), tmp_path / "labels.jsonl"
    how = LabelPrompting(Oracle(ml100k, stop_after=3 * len(labels)), out=out, progress=False)
    with pytest.raises(KeyboardInterrupt):
        annotate_labels(ml100k, "genres", labels, items, how)
    assert len(AnnotationFile(out).records()) == 3  # every finished item was kept
    with out.open("a") as f:
        f.write('{"key": "99", "scores": {"Dra')  # a record torn by the kill
    oracle = Oracle(ml100k)
    how = LabelPrompting(oracle, out=out, progress=False)
    first, report = annotate_labels(ml100k, "genres", labels, items, how)
    assert (report.cached, report.asked) == (3, 5)
    assert len(oracle.prompts) == 5 * len(labels)
    again, report = annotate_labels(ml100k, "genres", labels, items, how)
    assert (report.cached, report.asked) == (8, 0) and len(oracle.prompts) == 5 * len(labels)
    np.testing.assert_array_equal(first, again)
    record = AnnotationFile(out).records()[str(items[0])]
    assert record["model"] == "fake:oracle" and record["prompt"] == "labels-yesno-v3"


@pytest.mark.slow
def test_few_shot_examples_come_from_the_pool_and_never_the_item(ml100k, ml100k_store,
                                                                 tmp_path: Path):
    labels = label_matrix(ml100k, "genres", min_count=20).labels
    items, pool = _items(ml100k, 4), _items(ml100k, 60)[10:]
    oracle = Oracle(ml100k)
    how = LabelPrompting(oracle, method="choice", examples=3, store=ml100k_store,
                         out=tmp_path / "few.jsonl", progress=False)
    annotate_labels(ml100k, "genres", labels, items, how, pool=pool)
    texts = item_texts(ml100k)
    allowed = {texts[int(i)] for i in pool}
    for item, messages in zip(items, oracle.prompts, strict=True):
        shown = re.findall(r"Item: (.*)", messages[1]["content"])
        assert len(shown) == 4 and shown[-1] == texts[int(item)]
        assert set(shown[:3]) <= allowed and texts[int(item)] not in shown[:3]
        assert "Genres: " in messages[1]["content"]  # each example with its labels


def test_classify_llm_mode_is_evaluated_like_the_others(ml100k, ml100k_store,
                                                        tmp_path: Path):
    oracle = Oracle(ml100k)
    how = LabelPrompting(oracle, method="choice", out=tmp_path / "c.jsonl", progress=False)
    result = classify(ml100k, "genres", [], "llm", ml100k_store, min_count=20, llm=how,
                      test_items=30, valid_items=20)
    assert result["items"]["test"] == 30 and result["items"]["valid"] == 20
    assert len(oracle.prompts) == 50  # only the sampled validation and test items
    assert result["map"] == pytest.approx(1.0) and result["micro_f1"] > 0.9
    # the embedding modes are measured on the same sample
    knn = classify(ml100k, "genres", ["text"], "knn", ml100k_store, min_count=20,
                   test_items=30)
    assert knn["items"]["test"] == 30 and knn["map"] < result["map"]
    with pytest.raises(ValueError, match="needs a language model"):
        classify(ml100k, "genres", [], "llm", ml100k_store)


def test_the_model_reads_the_text_column_it_is_given(ml100k, tmp_path: Path):
    class Recorder:
        spec = fingerprint = "fake:recorder"

        def __init__(self) -> None:
            self.seen: list[str] = []

        def score(self, messages, options):
            self.seen.append(messages[1]["content"])
            return np.log(np.full(len(options), 1 / len(options)))

    # as `modrec transcribe` leaves it: a computed column beside the title
    dataset = dataclasses.replace(ml100k, items=ml100k.items.assign(
        video_text=[f"spoken words {n}" for n in range(len(ml100k.items))]))
    items, labels = _items(dataset, 2), ["Comedy", "Drama"]
    spoken = dataset.items.set_index("item")["video_text"]
    default, by_column = Recorder(), Recorder()
    _, first = annotate_labels(dataset, "genres", labels, items, LabelPrompting(
        default, method="choice", out=None, progress=False))
    _, second = annotate_labels(dataset, "genres", labels, items, LabelPrompting(
        by_column, method="choice", text="video_text", progress=False))
    assert all(spoken[int(i)] in seen and "spoken" not in plain for i, seen, plain in
               zip(items, by_column.seen, default.seen, strict=True))
    assert first.path != second.path  # answers about other texts are cached apart
    with pytest.raises(ValueError, match="no item column 'transcript'"):
        annotate_labels(dataset, "genres", labels, items, LabelPrompting(
            default, text="transcript", progress=False))


def test_label_scores_become_an_item_column(ml100k, tmp_path: Path):
    from modrec.content.columns import ItemColumns, with_item_columns, write_label_column

    labels = label_matrix(ml100k, "genres", min_count=20).labels
    items = _items(ml100k, 5)
    scores, _ = annotate_labels(ml100k, "genres", labels, items, LabelPrompting(
        Oracle(ml100k), out=tmp_path / "a.jsonl", progress=False))
    columns = ItemColumns(tmp_path / "columns")
    write_label_column(ml100k, "llm_genres", labels, items, scores, "fake:oracle",
                       "labels-yesno-v3", "text", columns=columns)
    table = with_item_columns(ml100k, columns).items.set_index("item")
    for item in items:  # exactly the true labels among those kept
        truth = set(split_tags(table.loc[int(item), "genres"])) & set(labels)
        assert set(table.loc[int(item), "llm_genres"].split("|")) == truth
    assert table["llm_genres"].isna().sum() == len(table) - len(items)
    with pytest.raises(ValueError, match="already has a column 'genres'"):
        write_label_column(ml100k, "genres", labels, items, scores, "x", "v", "text",
                           columns=columns)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        write_label_column(ml100k, "llm2", labels, items, scores, "x", "v", "text",
                           threshold=2.0, columns=columns)


@pytest.mark.slow
def test_ensemble_weighs_the_language_model_by_validation(ml100k, ml100k_store,
                                                         tmp_path: Path):
    class Coin(Oracle):  # scores unrelated to the item
        spec = fingerprint = "fake:coin"

        def score(self, messages, options):
            self._labels(messages)
            return np.log(np.random.default_rng(len(self.prompts)).uniform(0.05, 1, 2))

    common = dict(min_count=20, test_items=40, valid_items=40)
    trained = classify(ml100k, "genres", ["text"], "trained", ml100k_store,
                       **{**common, "valid_items": None})
    perfect = classify(ml100k, "genres", ["text"], "ensemble", ml100k_store, llm=LabelPrompting(
        Oracle(ml100k), out=tmp_path / "o.jsonl", progress=False), **common)
    noise = classify(ml100k, "genres", ["text"], "ensemble", ml100k_store, llm=LabelPrompting(
        Coin(ml100k), out=tmp_path / "c.jsonl", progress=False), **common)
    assert perfect["ensemble_weight"] >= 0.5 and perfect["micro_f1"] > 0.9
    assert noise["ensemble_weight"] <= 0.3  # the coin barely counts
    assert noise["map"] > 0.8 * trained["map"] and perfect["map"] > trained["map"]
    with pytest.raises(ValueError, match="needs stored embeddings"):
        classify(ml100k, "genres", [], "ensemble", ml100k_store, llm=LabelPrompting(
            Oracle(ml100k), out=tmp_path / "x.jsonl", progress=False))


def test_the_items_asked_are_a_seeded_sorted_sample():
    """What `modrec annotate --items N --seed S` asks about (moved out of the CLI): the
    same draw as before, sorted, every item when no count is given."""
    items = sample_items(1682, 5, seed=3)
    expected = np.sort(np.random.default_rng(3).permutation(1682)[:5] + 1)
    np.testing.assert_array_equal(items, expected)
    assert (np.diff(items) > 0).all() and items.min() >= 1 and items.max() <= 1682
    np.testing.assert_array_equal(sample_items(7, None, seed=1), np.arange(1, 8))
    assert not np.array_equal(sample_items(1682, 5, seed=4), items)


def test_a_label_column_records_the_prompt_version_and_the_examples(ml100k):
    how = LabelPrompting(Oracle(ml100k), method="choice", examples=3)
    assert how.version() == "labels-choice-v1:examples=3"


def test_relevance_pairs_are_each_querys_top_items_with_a_vector():
    scores = np.array([[0.1, 0.9, -np.inf, 0.5],
                       [-np.inf, -np.inf, -np.inf, 0.2]])  # (Q, N): item index - 1
    assert relevance_pairs(["a", "b"], scores, top=3) == [
        ("a", 2), ("a", 4), ("a", 1), ("b", 4)]  # best first; no item without a vector
    assert relevance_pairs(["a", "b"], scores, top=1) == [("a", 2), ("b", 4)]
    ties = np.zeros((1, 3))
    assert relevance_pairs(["t"], ties, top=2) == [("t", 1), ("t", 2)]  # ties in item order


def test_relevance_is_the_expected_grade(ml100k, tmp_path: Path):
    class Grader:
        spec = fingerprint = "fake:grader"

        def score(self, messages, options):
            assert options == ["0", "1", "2", "3"]
            return np.log([0.1, 0.1, 0.2, 0.6])  # expected grade 2.3

    texts = item_texts(ml100k)
    grades, report = grade_relevance(ml100k, Grader(), [("a comedy", 1), ("a war film", 2)],
                                     out=tmp_path / "r.jsonl", progress=False)
    np.testing.assert_allclose(grades, [2.3, 2.3])
    record = AnnotationFile(tmp_path / "r.jsonl").records()["a comedy\t1"]
    assert record["prompt"] == "relevance-v1" and texts[1]


def test_llm_rerank_reorders_the_top_of_search_by_grade(ml100k, ml100k_store):
    from modrec.content.search import TextSearch, search_map

    class Likes:  # grades 3 only what contains "Star", 0 otherwise
        spec = fingerprint = "fake:likes-star"

        def score(self, messages, options):
            hit = "Star" in messages[1]["content"].split("Item: ")[-1]
            return np.log([0.01, 0.01, 0.01, 0.97] if hit else [0.97, 0.01, 0.01, 0.01])

    engine = TextSearch(ml100k, ml100k_store)
    plain = engine.search("space adventure", k=20)
    reranked = engine.search("space adventure", k=20, llm=Likes(), rerank_top=20)
    assert {h["item"] for h in plain} == {h["item"] for h in reranked}  # same top 20
    stars = [h for h in plain if "Star" in h["title"]]
    assert stars and [h["item"] for h in reranked[:len(stars)]] == [h["item"] for h in stars]
    rest = [h["item"] for h in plain if "Star" not in h["title"]]
    assert [h["item"] for h in reranked[len(stars):]] == rest  # embedding order kept
    result = search_map(ml100k, "genres", store=ml100k_store, min_count=100, llm=Likes(),
                        rerank_top=5)
    assert result["rerank"] == {"llm": "fake:likes-star", "top": 5} and 0 < result["map"] < 1
