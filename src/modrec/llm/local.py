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

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modrec.fingerprints import file_fingerprint
from modrec.llm.model import LLMError, Message, OptionTokens, option_logprobs, require_json

log = logging.getLogger(__name__)

# How llama-cpp-python is built: from source, with CPU flags every x86-64 machine of the
# last decade has (not -march=native, so a .venv moved to another machine still runs),
# never from pip's cache (a wheel cached from another build could carry other flags).
# `make install` runs exactly this command (LLM=0 skips it).
INSTALL = ("CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON "
           "-DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF\" python -m pip install "
           "--no-cache-dir 'llama-cpp-python[server]==0.3.36'")

# Used when a GGUF file carries no chat template of its own.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# Sequences a context can hold at once: sequence 0 (the shared prompt) plus one per
# label prompt scored together in `LlamaCppModel.score_batch`.
MAX_SEQUENCES = 32


@contextlib.contextmanager
def _parallel_sequences(bindings: Any, sequences: int) -> Iterator[None]:
    """Contexts created inside hold ``sequences`` sequences in one unified KV cache
    (cells shared by several sequences are stored once). ``Llama`` has no argument for
    it, so the bindings' source of default context parameters (``llama_cpp.llama_cpp``,
    which ``Llama`` reads) is wrapped for the construction."""
    defaults = bindings.llama_context_default_params

    def wider() -> Any:
        params = defaults()
        params.n_seq_max = sequences
        params.kv_unified = True
        return params

    bindings.llama_context_default_params = wider
    try:
        yield
    finally:
        bindings.llama_context_default_params = defaults


def _common_length(token_lists: list[list[int]]) -> int:
    """How many leading tokens all lists share."""
    first = token_lists[0]
    common = min(len(t) for t in token_lists)
    for tokens in token_lists[1:]:
        n = 0
        while n < common and tokens[n] == first[n]:
            n += 1
        common = n
    return common


class LlamaCppModel:
    """``local:PATH.gguf``. ``threads``: llama.cpp threads (default: its own choice).
    ``prefix_cache`` and ``batch_prompts`` exist to measure what they save."""

    def __init__(self, path: str | Path, threads: int | None = None, context: int = 4096,
                 seed: int = 0, prefix_cache: bool = True, batch_prompts: bool = True) -> None:
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
        self.batch_prompts = batch_prompts  # False: score_batch scores one by one
        self.threads = threads
        try:
            with _parallel_sequences(llama_cpp.llama_cpp, MAX_SEQUENCES):
                self._llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=context,
                                            n_threads=threads, n_threads_batch=threads,
                                            seed=seed, verbose=False)
        except (ValueError, RuntimeError) as err:
            raise LLMError(f"llama.cpp could not load {self.path}: {err}") from None
        self.sequences = int(llama_cpp.llama_n_seq_max(self._llm._ctx.ctx))
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

    def score_batch(self, prompts: list[list[Message]], options: list[str]) -> np.ndarray:
        """``(N, K)``: `score` of every prompt, in one pass over the weights per chunk.

        The part all prompts share (the item's description) is evaluated once, as
        sequence 0; each prompt's own tail (the label) becomes one more sequence of a
        single llama.cpp batch that starts from the shared cells, so 18 label prompts
        cost one forward pass over 18 short tails instead of 18 passes. The extra
        sequences are dropped afterwards; sequence 0 keeps the shared part cached for
        the next call."""
        if not prompts:
            return np.zeros((0, len(options)))
        with self._lock:
            ids = self._option_ids(options)
            token_lists = [self.tokens(m) for m in prompts]
            shared = 0  # tokens every prompt shares, leaving each a tail of at least one
            if (self.prefix_cache and self.batch_prompts and self.sequences > 1
                    and len(prompts) > 1):
                shared = min(_common_length(token_lists),
                             min(len(t) for t in token_lists) - 1)
            if shared == 0:  # one by one
                return np.stack([option_logprobs(self._last_logits(t), ids)
                                 for t in token_lists])
            self._hold(token_lists[0][:shared], evaluate_last=False)
            rows: list[np.ndarray] = []
            for chunk in self._tail_chunks([t[shared:] for t in token_lists]):
                rows.extend(option_logprobs(logits, ids)
                            for logits in self._decode_tails(chunk, shared))
            self.stats["prompt_tokens"] += sum(len(t) for t in token_lists)
        return np.stack(rows)

    def _hold(self, tokens: list[int], evaluate_last: bool) -> None:
        """Sequence 0 holds exactly ``tokens``, evaluating only what the KV cache lacks
        (with ``evaluate_last``, at least the last token, so that its logits are fresh;
        without the prefix cache, all of them)."""
        llm = self._llm
        if len(tokens) >= llm.n_ctx():
            raise LLMError(f"a prompt of {len(tokens)} tokens does not fit the context of "
                           f"{llm.n_ctx()}; shorten the item text or raise the context")
        common = 0
        if self.prefix_cache:
            cached = llm.input_ids[:llm.n_tokens]
            limit = min(len(cached), len(tokens) - (1 if evaluate_last else 0))
            while common < limit and cached[common] == tokens[common]:
                common += 1
        started = time.perf_counter()
        llm.n_tokens = common  # eval drops the cache beyond n_tokens first
        if common < len(tokens):
            llm.eval(tokens[common:])
        else:  # all of it cached: drop anything cached beyond it
            llm._ctx.kv_cache_seq_rm(0, common, -1)
        self.stats["seconds"] += time.perf_counter() - started
        self.stats["evaluated_tokens"] += len(tokens) - common

    def _tail_chunks(self, tails: list[list[int]]) -> list[list[list[int]]]:
        """Tails grouped so a group fits one batch and the free sequence ids."""
        budget, most = self._llm.n_batch, self.sequences - 1
        chunks: list[list[list[int]]] = [[]]
        size = 0
        for tail in tails:
            if len(tail) > budget:
                raise LLMError(f"a label prompt's own part is {len(tail)} tokens, more than "
                               f"the batch of {budget}; shorten the label")
            if chunks[-1] and (size + len(tail) > budget or len(chunks[-1]) == most):
                chunks.append([])
                size = 0
            chunks[-1].append(tail)
            size += len(tail)
        return chunks

    def _decode_tails(self, tails: list[list[int]], start: int) -> list[np.ndarray]:
        """The last-position logits of each tail, decoded as sequences 1..len(tails)
        that continue sequence 0's first ``start`` cells."""
        import llama_cpp

        llm = self._llm
        context, memory, batch = llm._ctx, llm._ctx.memory, llm._batch.batch
        if start + max(len(t) for t in tails) >= llm.n_ctx():
            raise LLMError(f"a prompt of {start + max(len(t) for t in tails)} tokens does "
                           f"not fit the context of {llm.n_ctx()}")
        started = time.perf_counter()
        last: list[int] = []
        n = 0
        for seq, tail in enumerate(tails, start=1):
            context.kv_cache_seq_cp(0, seq, 0, start)  # shares cells, copies nothing
            for offset, token in enumerate(tail):
                batch.token[n] = token
                batch.pos[n] = start + offset
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = offset == len(tail) - 1
                n += 1
            last.append(n - 1)
        batch.n_tokens = n
        try:
            code = llama_cpp.llama_decode(context.ctx, batch)
            if code != 0:
                raise LLMError(f"llama.cpp could not decode {len(tails)} label prompts "
                               f"together (code {code}); the context may be full")
            vocab = llm.n_vocab()
            rows = [np.ctypeslib.as_array(context.get_logits_ith(i), shape=(vocab,))
                    .astype(np.float64) for i in last]
        finally:
            for seq in range(1, len(tails) + 1):
                llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
        self.stats["seconds"] += time.perf_counter() - started
        self.stats["evaluated_tokens"] += n
        return rows

    def _last_logits(self, tokens: list[int]) -> np.ndarray:
        """``(V,)`` logits after ``tokens``, evaluating only the part not already cached."""
        self._hold(tokens, evaluate_last=True)
        self.stats["prompt_tokens"] += len(tokens)
        # Only the last position's logits are computed (logits_all=False).
        llm = self._llm
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
            require_json(text, f"the reply stopped before its JSON was complete "
                               f"({choice.get('finish_reason')}, {len(text)} characters); "
                               "raise max_tokens")
        return text

