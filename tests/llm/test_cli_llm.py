"""``modrec annotate`` and ``modrec classify --mode llm`` end to end on SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modrec.cli import main


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_annotate_writes_a_resumable_file(smollm_file: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "genres.jsonl"
    args = ["annotate", "-d", "ml-100k", "--labels", "genres", "--llm", f"local:{smollm_file}",
            "--items", "2", "--threads", "1", "--min-count", "100", "--out", str(out),
            "--no-progress", "--json"]
    assert main(args) == 0
    first = _last_json(capsys)
    assert (first["asked"], first["cached"]) == (2, 0) and first["method"] == "yesno"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    assert set(records[0]["scores"]) == set(first["labels"])
    assert all(0 <= p <= 1 for p in records[0]["scores"].values())
    assert main(args) == 0  # the rerun asks nothing
    assert (_last_json(capsys)["asked"], len(out.read_text().splitlines())) == (0, 2)


def test_annotate_keeps_the_labels_as_an_item_column(smollm_file: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]):
    from modrec.content.columns import ItemColumns, with_item_columns
    from modrec.data import load_dataset

    monkeypatch.setenv("MODREC_EMBEDDINGS_DIR", str(tmp_path / "store"))
    args = ["annotate", "-d", "ml-100k", "--labels", "genres", "--llm", f"local:{smollm_file}",
            "--items", "3", "--threads", "1", "--min-count", "100", "--column", "llm_genres",
            "--threshold", "0.4", "--no-progress", "--json"]
    assert main(args) == 0
    result = _last_json(capsys)
    assert result["item_column"]["items"] == 3
    dataset = with_item_columns(load_dataset("ml-100k"))
    labelled = dataset.items["llm_genres"].dropna()
    assert len(labelled) == 3 and all(set(v.split("|")) <= set(result["labels"])
                                      for v in labelled)
    record = next(iter(ItemColumns.for_dataset(dataset).records("llm_genres").values()))
    assert set(record["scores"]) == set(result["labels"]) and "threshold=0.4" in record["version"]
    # the column feeds the other verbs: embedded as tags
    assert main(["embed", "-d", "ml-100k", "--encoder", "tags:llm_genres", "--json"]) == 0


def test_classify_llm_mode_misuse_is_one_message(capsys: pytest.CaptureFixture[str]):
    assert main(["classify", "-d", "ml-100k", "--labels", "genres", "--mode", "llm"]) == 2
    assert "needs --llm" in capsys.readouterr().err
    assert main(["classify", "-d", "ml-100k", "--labels", "genres"]) == 2
    assert "needs --encoder" in capsys.readouterr().err
    assert main(["annotate", "-d", "ml-100k", "--labels", "genres", "--llm", "bogus"]) == 2
    assert "unknown language model" in capsys.readouterr().err


@pytest.mark.slow
def test_annotate_relevance_grades_the_top_search_results(
        smollm_file: Path, ml100k, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]):
    from modrec.content import EmbeddingStore, embed

    monkeypatch.setenv("MODREC_EMBEDDINGS_DIR", str(tmp_path / "stores"))
    embed(ml100k, ["text"], EmbeddingStore.for_dataset(ml100k), progress=False)
    out = tmp_path / "relevance.jsonl"
    assert main(["annotate", "-d", "ml-100k", "--task", "relevance", "--query",
                 "a space adventure", "--top", "3", "--llm", f"local:{smollm_file}",
                 "--threads", "1", "--out", str(out), "--no-progress", "--json"]) == 0
    assert _last_json(capsys)["asked"] == 3
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(0 <= r["grade"] <= 3 and abs(sum(r["p"]) - 1) < 1e-4 for r in records)
    assert main(["search", "-d", "ml-100k", "a space adventure", "-k", "3", "--rerank", "llm",
                 "--rerank-top", "3", "--llm", f"local:{smollm_file}", "--json"]) == 0
    assert len(_last_json(capsys)["items"]) == 3
