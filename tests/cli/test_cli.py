from __future__ import annotations

import json
from pathlib import Path

import pytest

from modrec.cli import main


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_datasets_lists_named_sets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "--json"]) == 0
    rows = {r["name"]: r for r in _last_json(capsys)["datasets"]}
    for name in ("ml-1m", "ml-1m-sasrec", "ml-100k", "amazon-beauty", "amazon-sports",
                 "amazon-toys", "yelp", "amazon-scientific"):
        assert rows[name]["present"], name


def test_train_evaluate_recommend_round_trip(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "-d", "ml-100k", "-m", "sasrec", "--epochs", "1", "--out", str(run),
                 "--set", "model.max_len=50", "--no-progress", "--json"]) == 0
    trained = _last_json(capsys)
    assert trained["run_dir"] == str(run)
    assert trained == {**json.loads((run / "results.json").read_text()), "run_dir": str(run)}
    assert trained["ndcg@10"] > 0.01  # a random ranking of 1,682 movies scores about 0.003

    assert main(["evaluate", str(run), "--json"]) == 0
    evaluated = _last_json(capsys)
    assert evaluated["test"]["ndcg@10"] == pytest.approx(trained["ndcg@10"])

    assert main(["recommend", str(run), "--user", "196", "-k", "5", "--json"]) == 0
    recs = _last_json(capsys)
    assert len(recs["items"]) == 5 and all(r["title"] for r in recs["items"])
    scores = [r["score"] for r in recs["items"]]
    assert scores == sorted(scores, reverse=True)
    from modrec.data import load_dataset

    ml100k = load_dataset("ml-100k")
    seen = {ml100k.items["item_id"].iloc[i - 1]
            for i in ml100k.sequences()[ml100k.user_index("196")]}
    assert not seen & {r["item_id"] for r in recs["items"]}
    assert main(["recommend", str(run), "--user", "196", "-k", "3"]) == 0
    assert "top 3 recommendations" in capsys.readouterr().out

    assert main(["refit", str(run), "--no-progress", "--json"]) == 0
    refitted = _last_json(capsys)
    assert refitted["run_dir"] == f"{run}-refit" and refitted["refit_of"] == str(run)
    assert refitted["valid"] is None and refitted["epochs"] == 1


def test_train_by_path_with_format(tmp_path: Path, data_dir: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "-d", str(data_dir / "ml-100k" / "u.data"), "--format", "csv",
                 "-m", "popularity", "--out", str(tmp_path / "p"), "--json"]) == 2
    assert "no user column" in capsys.readouterr().err  # u.data has no header row
    assert main(["train", "-d", str(data_dir / "ml-100k"), "-m", "popularity",
                 "--out", str(tmp_path / "p"), "--json"]) == 0
    assert _last_json(capsys)["ndcg@10"] > 0.02


def test_bad_requests_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "-d", "no-such-set", "-m", "sasrec", "--out", str(tmp_path)]) == 2
    assert "neither a named dataset" in capsys.readouterr().err
    assert main(["train", "-d", "ml-100k", "-m", "sasrec", "--set", "train.lr=fast",
                 "--out", str(tmp_path)]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_embed_classify_search_train_content(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    assert main(["embed", "-d", "lastfm-2k", "--encoder", "vggish,minilm", "--store", store,
                 "--no-progress", "--json"]) == 0
    report = _last_json(capsys)
    assert [e["encoder"] for e in report["encoders"]] == ["vggish", "minilm"]
    assert all(e["encoded"] == 1425 and e["failures"] == 0 for e in report["encoders"])
    assert report["encoders"][0]["items_per_second"] > 0
    # Re-running encodes nothing: the store is incremental.
    assert main(["embed", "-d", "lastfm-2k", "--encoder", "vggish", "--store", store,
                 "--no-progress", "--json"]) == 0
    assert _last_json(capsys)["encoders"][0]["already_stored"] == 1425

    assert main(["classify", "-d", "lastfm-2k", "--labels", "tags", "--encoder", "vggish",
                 "--mode", "knn", "--store", store, "--json"]) == 0
    result = _last_json(capsys)
    assert set(result) >= {"micro_f1", "macro_f1", "map"} and result["labels"] == 50
    # A random ranking's mAP is each tag's prevalence, 0.177 on average over these 50.
    assert result["map"] > 0.25

    assert main(["search", "-d", "lastfm-2k", "heavy metal", "-k", "3", "--encoder",
                 "minilm", "--store", store]) == 2  # precomputed vectors: no query encoder
    assert "not text" in capsys.readouterr().err

    assert main(["classify", "-d", "lastfm-2k", "--labels", "nope", "--encoder", "vggish",
                 "--store", store]) == 2
    assert "no item column 'nope'" in capsys.readouterr().err


def test_embed_unknown_encoder_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "-d", "ml-100k", "--encoder", "smell"]) == 2
    assert "unknown encoder 'smell'" in capsys.readouterr().err
