from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench as bench_module  # noqa: E402 - benchmarks/ is not a package
from kit import write_section  # noqa: E402


def main(argv: list[str]) -> int:
    """``python benchmarks/bench.py ARGS``, in this process."""
    assert argv[0] == "bench"
    return bench_module.main([a for a in argv[1:] if a != "--json"])


def test_bench_writes_table_and_chart(tmp_path: Path, capsys) -> None:
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text("# Benchmarks\n\nkept text\n")
    args = ["bench", "ml-100k", "--models", "popularity", "--runs", str(tmp_path / "runs"),
            "--doc", str(doc), "--records", "none", "--json"]
    assert main(args) == 0
    text = doc.read_text()
    assert "kept text" in text and "| popularity |" in text
    assert "python benchmarks/bench.py ml-100k --models popularity" in text
    assert (doc.parent / "bench-ml-100k-popularity.png").stat().st_size > 1000
    assert main(args) == 0  # rerun reuses the run and replaces the section in place
    assert doc.read_text().count("| popularity |") == 1


def test_bench_reruns_a_preset_that_changed(tmp_path: Path, monkeypatch) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    monkeypatch.setenv("MODREC_CONFIG_DIR", str(configs))
    runs = tmp_path / "runs"
    args = ["bench", "ml-100k", "--models", "popularity", "--runs", str(runs),
            "--doc", str(tmp_path / "benchmarks.md"), "--records", "none"]
    (configs / "popularity.yaml").write_text("train: {eval_batch_size: 256}\n")
    assert main(args) == 0
    run = runs / "ml-100k-popularity"
    first = (run / "results.json").stat().st_mtime_ns
    assert main(args) == 0  # unchanged preset: the finished run is reused
    assert (run / "results.json").stat().st_mtime_ns == first
    (configs / "popularity.yaml").write_text("train: {eval_batch_size: 512}\n")
    assert main(args) == 0  # changed preset: run again
    assert json.loads((run / "config.json").read_text())["train"]["eval_batch_size"] == 512


def test_bench_reports_from_the_record_once_the_run_is_gone(tmp_path: Path,
                                                          monkeypatch) -> None:
    runs, records, doc = tmp_path / "runs", tmp_path / "records", tmp_path / "benchmarks.md"
    args = ["bench", "ml-100k", "--models", "popularity", "--runs", str(runs),
            "--doc", str(doc), "--records", str(records)]
    assert main(args) == 0
    record = records / "ml-100k-popularity"
    assert sorted(p.name for p in record.iterdir()) == [
        "config.json", "metrics.jsonl", "recorded.json", "results.json"]
    first = doc.read_text()
    shutil.rmtree(runs)  # a fresh checkout: the records travel, the run folders do not

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded preset must not train again")

    monkeypatch.setattr(bench_module, "train", no_training)
    assert main(args) == 0
    assert doc.read_text() == first  # the same table, from the record
    assert not runs.exists()


def test_bench_no_train_leaves_out_what_has_not_run(tmp_path: Path, monkeypatch,
                                                    capsys) -> None:
    runs, records, doc = tmp_path / "runs", tmp_path / "records", tmp_path / "benchmarks.md"
    common = ["--runs", str(runs), "--doc", str(doc), "--records", str(records)]
    assert main(["bench", "ml-100k", "--models", "popularity", *common]) == 0
    monkeypatch.setattr(bench_module, "train", None)  # --no-train must not call it
    assert main(["bench", "ml-100k", "--models", "popularity,sasrec", "--no-train",
                 *common]) == 0
    text = doc.read_text()
    assert "| popularity |" in text and "| sasrec |" not in text
    assert "Not run yet with their current settings, so left out: sasrec" in text
    assert main(["bench", "ml-100k", "--models", "sasrec", "--no-train", *common]) == 2
    assert "none of sasrec has a finished run" in capsys.readouterr().err


def test_write_section_replaces_only_its_own_block(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    write_section(doc, "a", "first A")
    write_section(doc, "b", "first B")
    write_section(doc, "a", "second A")
    text = doc.read_text()
    assert "second A" in text and "first B" in text and "first A" not in text
