"""The interface every language-model backend speaks, and the arithmetic on its scores.

A backend answers chat messages (``[{"role": "system" | "user", "content": ...}]``) in
two ways:

* ``complete(messages, schema)`` generates a reply; with a JSON schema the reply is
  constrained to it (a grammar in llama.cpp, ``response_format`` over HTTP), so it always
  parses.
* ``score(messages, options)`` generates nothing: it reads the distribution of the
  reply's *first token* and returns, per option, the log-probability that the reply
  starts with it ("yes"/"no", the grades "0".."3", label names). Case and surrounding
  whitespace are ignored ("Yes", " yes" and "yes" count together), and an option is
  represented by its first token (as written, capitalised or in lower case), so
  options must differ in it. Scoring needs one
  forward pass and no sampling, which is why label scoring is cheaper and, on small
  models, better than reading a generated answer.

Messages may end with an ``assistant`` message: the beginning of the reply, written for
the model (a prefill). ``score`` then reads the token that follows it. The local backend
renders it exactly; over HTTP it is sent with vLLM's ``continue_final_message`` flag.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from modrec.errors import ModrecError, UsageError

Message = dict[str, str]

# The floor for an option the backend gave no probability for (not among an HTTP
# server's top log-probs): far below any real token, but finite so arithmetic stays sane.
MISSING_LOGPROB = -30.0


class LLMError(ModrecError, RuntimeError):
    """A language model could not be opened or did not answer; the message says why and
    what to do (install the runtime, start the server, check the path)."""


@runtime_checkable
class LanguageModel(Protocol):
    spec: str  # how it was opened, e.g. ``local:/models/qwen.gguf``
    fingerprint: str  # identifies the weights (file digest, or URL and model name)

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None,
                 max_tokens: int = 256) -> str:
        """The reply, greedy (temperature 0); JSON matching ``schema`` when given."""
        ...

    def score(self, messages: list[Message], options: list[str]) -> np.ndarray:
        """``(K,)`` float64 log-probabilities that the reply's first token is each option's."""
        ...


def require_json(text: str, problem: str) -> str:
    """``text`` when it parses as JSON, else `LLMError` saying ``problem``: the one check
    every backend makes of a reply a schema asked for (a grammar or ``response_format``
    should have made it JSON; a reply cut short by ``max_tokens``, a server ignoring the
    format, or the unconstrained ``hf:`` backend may not). Each backend words ``problem``
    for its own cause and cure."""
    try:
        json.loads(text)
    except ValueError:
        raise LLMError(problem) from None
    return text


def score_all(llm: LanguageModel, prompts: list[list[Message]],
              options: list[str]) -> np.ndarray:
    """``(N, K)``: ``llm.score`` of every prompt, through the backend's ``score_batch``
    when it has one (llama.cpp: one batch of the prompts' own parts after their shared
    part; a server: the requests in flight together, for it to batch)."""
    batched = getattr(llm, "score_batch", None)
    if batched is not None:
        return np.asarray(batched(prompts, options), dtype=np.float64)
    return np.stack([llm.score(p, options) for p in prompts]) if prompts else \
        np.zeros((0, len(options)))


def option_probabilities(logprobs: np.ndarray) -> np.ndarray:
    """The options' probabilities renormalised among themselves (a softmax over the
    given log-probabilities), so that "yes" vs "no" sums to one whatever mass the model
    put on other tokens."""
    logprobs = np.asarray(logprobs, dtype=np.float64)
    shifted = np.exp(logprobs - logprobs.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def expected_grade(logprobs: np.ndarray) -> float:
    """The mean grade under the grades' renormalised probabilities (options "0".."G")."""
    probabilities = option_probabilities(logprobs)
    return float(probabilities @ np.arange(len(probabilities)))


def same_token(text: str) -> str:
    """The key under which token texts count as one option: no case, no surrounding
    whitespace (SentencePiece's ``▁`` and GPT-2's ``Ġ`` space markers included)."""
    return text.replace("\u2581", " ").replace("\u0120", " ").strip().lower()


class OptionTokens:
    """Which vocabulary tokens count for an option: every token whose text (without case
    and surrounding space) equals the option's first token. Of the option as written,
    capitalised and in lower case, the form whose first token covers most of it is
    used: "paris" is read from "Paris", " paris", ... (not from "par"), and "Adventure"
    not from "ad". ``texts[i]`` is token i's text; ``tokenize`` turns a string into
    token ids (no special tokens)."""

    def __init__(self, texts: list[str], tokenize: Callable[[str], list[int]]) -> None:
        self._texts = [same_token(t) for t in texts]
        self._keys: dict[str, list[int]] = {}
        for token, key in enumerate(self._texts):
            self._keys.setdefault(key, []).append(token)
        self._tokenize = tokenize

    def ids(self, options: list[str]) -> list[list[int]]:
        ids: list[list[int]] = []
        owner: dict[str, str] = {}
        for option in options:
            firsts = [self._texts[tokens[0]] for variant in
                      dict.fromkeys([option, option.capitalize(), option.lower()])
                      if (tokens := self._tokenize(variant.strip()))]
            first = max(firsts, key=len, default="")  # the first form wins a tie
            if not first:
                raise UsageError(f"option {option!r} has no token text to score")
            if owner.setdefault(first, option) != option:
                raise UsageError(f"options {owner[first]!r} and {option!r} start with the "
                                 f"same token {first!r}; scoring cannot tell them apart")
            ids.append(self._keys[first])
        return ids


def option_logprobs(logits: np.ndarray, ids: list[list[int]]) -> np.ndarray:
    """``(K,)`` log-probabilities of the option token sets under ``(V,)`` logits."""
    logits = np.asarray(logits, dtype=np.float64)
    logprobs = logits - _logsumexp(logits)
    return np.array([_logsumexp(logprobs[i]) if i else MISSING_LOGPROB for i in ids])


def _logsumexp(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    top = float(values.max())
    return top + float(np.log(np.exp(values - top).sum()))
