"""What the benchmark scripts share: the machine a number was measured on, Markdown
tables and report sections, the published numbers we compare against, and the
training set-up, which is `modrec.train.setup` itself so that a timed step is the
step `modrec train` takes (set_known, weight decay, the preset's settings)."""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import platform
import re
import subprocess
import tempfile
from pathlib import Path

import torch

from modrec.config import build_config
from modrec.train import Session, setup

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"

# The HSTU repository's README (ML-1M, leave-one-out, full ranking; its BERT4Rec and
# GRU4Rec rows quote Klenitskiy & Vasilev, RecSys 2023):
# HR@10, NDCG@10, HR@50, NDCG@50, HR@200, NDCG@200 (None where not published).
PUBLISHED: dict[str, dict[str, tuple[float | None, ...]]] = {
    "ml-1m": {
        "sasrec": (0.2853, 0.1603, 0.5474, 0.2185, 0.7528, 0.2498),
        "hstu": (0.3097, 0.1720, 0.5754, 0.2307, 0.7716, 0.2606),
        "hstu-large": (0.3294, 0.1893, 0.5935, 0.2481, 0.7839, 0.2771),
        "bert4rec": (0.2843, 0.1537, None, None, None, None),
        "gru4rec": (0.2811, 0.1648, None, None, None, None),
    }
}
def cpu_name() -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``), else the architecture: speeds
    from different hosts are only comparable when the report says which host it was."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    cpu = f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} ({cpu})"
    return cpu


def git_revision() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=ROOT).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(doc: Path, name: str, body: str) -> None:
    """Replace the text between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` (or
    append it), so that each benchmark can be rerun without touching the others."""
    header = ("# Benchmarks\n\nEvery number below was measured by the command written "
              "beside it, on the machine\ndescribed in its section. Speeds on a shared "
              "machine are noisy: compare them as\nratios measured in the same run.\n")
    text = doc.read_text() if doc.exists() else header
    block = f"<!-- begin {name} -->\n{body.strip()}\n<!-- end {name} -->"
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->",
                         re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def session_for(dataset: str, preset: str, overrides: list[str] | None = None,
                out_dir: Path | None = None) -> Session:
    """A training session exactly as ``modrec train -d DATASET -m PRESET --set ...``
    starts it (written into a temporary folder unless ``out_dir`` is given)."""
    config = build_config(dataset, preset, overrides=overrides)
    out = out_dir or Path(tempfile.mkdtemp(prefix=f"bench-{dataset}-{preset}-"))
    return setup(config, out, show_progress=False)
