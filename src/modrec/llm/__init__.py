"""Language models behind one interface (`LanguageModel`: ``complete`` and ``score``),
opened from a spec string:

* ``local:PATH.gguf``           llama.cpp in this process (llama-cpp-python)
* ``openai:URL#MODEL``          an OpenAI-compatible chat API (vLLM, llama.cpp server,
                                TGI, Ollama)
* ``hf:NAME``                   a Hugging Face model through transformers (a hub name,
                                downloaded where a network exists, or a local folder)

Prompts are versioned templates in ``modrec/llm/prompts/`` (`load_prompt`). Imports
nothing else of modrec but `modrec.fingerprints` (the weights' identities content uses
too); ``content.annotate`` puts it to work on a catalog.
"""

from __future__ import annotations

from modrec.errors import ConfigError
from modrec.llm.model import (
    LanguageModel,
    LLMError,
    Message,
    expected_grade,
    option_probabilities,
    score_all,
)
from modrec.llm.prompts import Prompt, load_prompt

__all__ = ["LLMError", "LanguageModel", "Message", "Prompt", "expected_grade", "load_prompt",
           "open_llm", "option_probabilities", "score_all"]


def open_llm(spec: str, threads: int | None = None, context: int = 4096,
             timeout: float = 120.0, concurrency: int = 4) -> LanguageModel:
    """The model a spec names. ``threads`` and ``context`` apply to local models,
    ``timeout`` and ``concurrency`` to servers."""
    kind, sep, rest = spec.partition(":")
    if kind == "local" and rest:
        from modrec.llm.local import LlamaCppModel

        return LlamaCppModel(rest, threads=threads, context=context)
    if kind == "openai" and rest:
        from modrec.llm.openai import OpenAIModel

        url, _, model = rest.partition("#")
        if not url.startswith(("http://", "https://")) or not model:
            raise ConfigError(f"--llm {spec!r}: expected openai:http(s)://HOST:PORT/v1#MODEL")
        return OpenAIModel(url, model, timeout=timeout, concurrency=concurrency)
    if kind == "hf" and rest:
        from modrec.llm.hf import HFModel

        return HFModel(rest)
    if not sep and spec.endswith(".gguf"):
        return open_llm(f"local:{spec}", threads, context, timeout, concurrency)
    raise ConfigError(f"unknown language model {spec!r}; expected local:PATH.gguf, "
                      "openai:URL#MODEL or hf:NAME")
