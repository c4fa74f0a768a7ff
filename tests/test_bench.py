from __future__ import annotations

from pathlib import Path

from modrec.bench import write_section
from modrec.cli import main


def test_bench_writes_table_and_chart(tmp_path: Path, capsys) -> None:
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text("# Benchmarks\n\nkept text\n")
    args = ["bench", "ml-100k", "--models", "popularity", "--runs", str(tmp_path / "runs"),
            "--doc", str(doc), "--json"]
    assert main(args) == 0
    text = doc.read_text()
    assert "kept text" in text and "| popularity |" in text
    assert "modrec bench ml-100k --models popularity" in text
    assert (doc.parent / "bench-ml-100k-popularity.png").stat().st_size > 1000
    assert main(args) == 0  # rerun reuses the run and replaces the section in place
    assert doc.read_text().count("| popularity |") == 1


def test_write_section_replaces_only_its_own_block(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    write_section(doc, "a", "first A")
    write_section(doc, "b", "first B")
    write_section(doc, "a", "second A")
    text = doc.read_text()
    assert "second A" in text and "first B" in text and "first A" not in text
