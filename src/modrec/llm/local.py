"""A GGUF model run in this process by llama.cpp (``llama-cpp-python``).

Scoring keeps the tokens already in the KV cache and evaluates only what differs from
the previous prompt: the per-label prompts of one item share everything up to the label,
so after the first label each costs a dozen tokens instead of the whole description
(``prefix_cache=False`` turns this off, to measure it).

The runtime is optional and compiled from source; build it portably (the default
native build can pick CPU paths that crash, e.g. AMX)::

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
      -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF" \
      pip install --no-cache-dir 'llama-cpp-python[server]==0.3.36'

Threads: llama.cpp's worker threads spin while waiting; on a machine where another
process is busy, two spinning threads slowed generation about 30x here. Use
``threads=1`` or ``OMP_WAIT_POLICY=PASSIVE`` there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from modrec.llm.model import LLMError, Message, OptionTokens, option_logprobs

log = logging.getLogger(__name__)

INSTALL = ("CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON "
           "-DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF\" pip install --no-cache-dir "
           "'llama-cpp-python[server]==0.3.36'")

# Used when a GGUF file carries no chat template of its own.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def file_fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """A cheap identity of a weights file: SHA-256 over its size and its first and last
    MiB (hashing a multi-gigabyte file in full on every start would cost seconds)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(chunk))
        f.seek(max(size - chunk, 0))
        digest.update(f.read(chunk))
    return f"gguf:{size}:{digest.hexdigest()[:16]}"


class LlamaCppModel:
    """``local:PATH.gguf``. ``threads``: llama.cpp threads (default: its own choice)."""

    def __init__(self, path: str | Path, threads: int | None = None, context: int = 4096,
                 seed: int = 0, prefix_cache: bool = True) -> None:
        try:
            import llama_cpp
        except ImportError as err:
            raise LLMError(f"local GGUF models need llama-cpp-python, which is not "
                           f"importable ({err}); build it with: {INSTALL}") from None
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise LLMError(f"no GGUF model file at {self.path}")
        self.spec = f"local:{self.path}"
        self.fingerprint = file_fingerprint(self.path)
        self.prefix_cache = prefix_cache
        self.threads = threads
        try:
            self._llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=context,
                                        n_threads=threads, n_threads_batch=threads,
                                        seed=seed, verbose=False)
        except (ValueError, RuntimeError) as err:
            raise LLMError(f"llama.cpp could not load {self.path}: {err}") from None
        self._lock = threading.Lock()
        self._formatter = self._chat_formatter(llama_cpp)
        self._options: OptionTokens | None = None
        self.stats = {"prompt_tokens": 0, "evaluated_tokens": 0, "generated_tokens": 0,
                      "seconds": 0.0}

    def _chat_formatter(self, llama_cpp: Any) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = self._llm._model
        eos, bos = model.token_eos(), model.token_bos()
        return Jinja2ChatFormatter(
            template=self._llm.metadata.get("tokenizer.chat_template", CHATML),
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
            add_generation_prompt=True)

    # ---- scoring ---------------------------------------------------------------------
    def tokens(self, messages: list[Message]) -> list[int]:
        """The chat prompt as the model reads it, ending where the reply begins (after
        a final assistant message's text: a prefill)."""
        prefill = ""
        if messages and messages[-1]["role"] == "assistant":
            messages, prefill = messages[:-1], messages[-1]["content"]
        rendered = self._formatter(messages=messages)
        return self._llm.tokenize((rendered.prompt + prefill).encode(),
                                  add_bos=not rendered.added_special, special=True)

    def _option_ids(self, options: list[str]) -> list[list[int]]:
        if self._options is None:  # the whole vocabulary once: ~1 s for 150k tokens
            llm = self._llm
            self._options = OptionTokens(
                [llm.detokenize([t]).decode("utf-8", errors="ignore")
                 for t in range(llm.n_vocab())],
                lambda text: llm.tokenize(text.encode(), add_bos=False))
        return self._options.ids(options)

    def score(self, messages: list[Message], options: list[str]) -> np.ndarray:
        with self._lock:
            tokens = self.tokens(messages)
            logits = self._last_logits(tokens)
            ids = self._option_ids(options)
        return option_logprobs(logits, ids)

    def _last_logits(self, tokens: list[int]) -> np.ndarray:
        """``(V,)`` logits after ``tokens``, evaluating only the part not already cached."""
        llm = self._llm
        if len(tokens) >= llm.n_ctx():
            raise LLMError(f"a prompt of {len(tokens)} tokens does not fit the context of "
                           f"{llm.n_ctx()}; shorten the item text or raise the context")
        common = 0
        if self.prefix_cache:
            cached = llm.input_ids[:llm.n_tokens]
            limit = min(len(cached), len(tokens) - 1)  # at least one token is evaluated
            while common < limit and cached[common] == tokens[common]:
                common += 1
        started = time.perf_counter()
        llm.n_tokens = common  # eval drops the cache beyond n_tokens first
        llm.eval(tokens[common:])
        self.stats["seconds"] += time.perf_counter() - started
        self.stats["prompt_tokens"] += len(tokens)
        self.stats["evaluated_tokens"] += len(tokens) - common
        # Only the last position's logits are computed (logits_all=False).
        return np.ctypeslib.as_array(llm._ctx.get_logits(),
                                     shape=(llm.n_vocab(),)).astype(np.float64)

    # ---- generation ------------------------------------------------------------------
    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None,
                 max_tokens: int = 256) -> str:
        response_format = None if schema is None else {"type": "json_object",
                                                       "schema": schema}
        started = time.perf_counter()
        with self._lock:
            if not self.prefix_cache:
                self._llm.reset()
            reply = self._llm.create_chat_completion(
                messages=messages, temperature=0.0, max_tokens=max_tokens,  # type: ignore[arg-type]
                response_format=response_format)  # type: ignore[arg-type]
        self.stats["seconds"] += time.perf_counter() - started
        usage = reply.get("usage") or {}  # type: ignore[union-attr]
        self.stats["generated_tokens"] += int(usage.get("completion_tokens", 0))
        self.stats["prompt_tokens"] += int(usage.get("prompt_tokens", 0))
        choice = reply["choices"][0]  # type: ignore[index]
        text = choice["message"]["content"] or ""
        if schema is not None:
            try:
                json.loads(text)
            except ValueError:
                raise LLMError(f"the reply stopped before its JSON was complete "
                               f"({choice.get('finish_reason')}, {len(text)} characters); "
                               "raise max_tokens") from None
        return text

