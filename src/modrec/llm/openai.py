"""A model behind an OpenAI-compatible chat API: what vLLM, llama.cpp's server, TGI,
Ollama and hosted services speak. ``openai:http://127.0.0.1:8011/v1#qwen`` posts to
``http://127.0.0.1:8011/v1/chat/completions`` with ``"model": "qwen"``.

* Constrained output: ``response_format`` ``json_schema`` (OpenAI, vLLM, Ollama); a
  server that refuses it (llama-cpp-python's answers 500 naming the field) is asked
  again with ``json_object`` plus ``schema``, its dialect, and that choice is kept.
* Scoring: one generated token with ``logprobs`` and ``top_logprobs`` (20, the API's
  most); an option absent from the top list gets `MISSING_LOGPROB`. Token texts match
  an option when, without case and surrounding space, they equal it or are a prefix of
  it of at least three characters (the server's tokenizer is not known here).
* Failures: connection errors, timeouts, 429 and 5xx are retried with exponential
  backoff (``retries`` times); then `LLMError` names the URL and the cause. A
  semaphore caps the requests in flight from one client (``concurrency``).
* ``$OPENAI_API_KEY``, when set, is sent as a bearer token.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from modrec.llm.model import MISSING_LOGPROB, LLMError, Message, require_json, same_token

RETRY_STATUS = {429, 500, 502, 503, 504}


class OpenAIModel:
    def __init__(self, base_url: str, model: str, timeout: float = 120.0, retries: int = 3,
                 backoff: float = 0.5, concurrency: int = 4, api_key: str | None = None) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.spec = f"openai:{self.base_url}#{model}"
        self.fingerprint = f"openai:{self.base_url}#{model}"
        self.retries, self.backoff = retries, backoff
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout,
                                    headers={"Authorization": f"Bearer {key}"} if key else {})
        self.concurrency = concurrency
        self._slots = threading.Semaphore(concurrency)
        self._schema_style = "json_schema"
        self.stats = {"requests": 0, "retries": 0, "prompt_tokens": 0,
                      "generated_tokens": 0, "seconds": 0.0}

    def close(self) -> None:
        self._client.close()

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        url = f"{self.base_url}/chat/completions"
        retries = self.retries
        with self._slots:
            for attempt in range(retries + 1):
                started = time.perf_counter()
                try:
                    response = self._client.post("/chat/completions", json=body)
                except httpx.TransportError as err:  # refused, reset, timed out
                    cause = f"{type(err).__name__}: {err}"
                else:
                    self.stats["seconds"] += time.perf_counter() - started
                    if response.status_code < 400:
                        self.stats["requests"] += 1
                        reply: dict[str, Any] = response.json()
                        usage = reply.get("usage") or {}
                        self.stats["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
                        self.stats["generated_tokens"] += int(
                            usage.get("completion_tokens") or 0)
                        return reply
                    cause = f"HTTP {response.status_code}: {response.text[:300]}"
                    # a request the server cannot parse fails the same way every time
                    # (llama-cpp-python answers 500 to an unknown response_format)
                    if (response.status_code not in RETRY_STATUS
                            or "response_format" in response.text):
                        raise LLMError(f"{url} refused the request ({cause})")
                if attempt < retries:
                    self.stats["retries"] += 1
                    time.sleep(self.backoff * 2 ** attempt)
        raise LLMError(f"no answer from {url} after {retries + 1} attempts ({cause}); "
                       "is the server running and is the URL right?")

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None,
                 max_tokens: int = 256) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "temperature": 0.0, "max_tokens": max_tokens}
        if schema is None:
            return _content(self._post(body))
        for style in dict.fromkeys([self._schema_style, "json_schema", "json_object"]):
            body["response_format"] = (
                {"type": "json_schema",
                 "json_schema": {"name": "answer", "schema": schema, "strict": True}}
                if style == "json_schema" else {"type": "json_object", "schema": schema})
            try:
                text = _content(self._post(body))
            except LLMError as err:
                if style == "json_schema" and "refused" in str(err):
                    continue  # the same request in the other dialect
                raise
            self._schema_style = style
            return require_json(text, f"{self.base_url} answered text that is not JSON "
                                f"although a schema was sent ({text[:200]!r}); does the "
                                "server support response_format?")
        raise LLMError(f"{self.base_url} refused both json_schema and json_object formats")

    def score_batch(self, prompts: list[list[Message]], options: list[str]) -> np.ndarray:
        """``(N, K)``: the prompts' `score` requests in flight together (up to the
        client's concurrency), for the server to batch."""
        if not prompts:
            return np.zeros((0, len(options)))
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return np.stack(list(pool.map(lambda m: self.score(m, options), prompts)))

    def score(self, messages: list[Message], options: list[str]) -> np.ndarray:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0.0,
                                "max_tokens": 1, "logprobs": True, "top_logprobs": 20}
        if messages and messages[-1]["role"] == "assistant":  # a prefill (vLLM's flags)
            body.update(continue_final_message=True, add_generation_prompt=False)
        reply = self._post(body)
        try:
            top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"{self.base_url} returned no top_logprobs; the server must "
                           "support logprobs (llama-cpp-python's needs --logits_all true)"
                           ) from None
        keys = [same_token(option) for option in options]
        mass = np.zeros(len(options))
        for entry in top:
            token = same_token(str(entry.get("token", "")))
            for k, key in enumerate(keys):
                if token and (token == key or (len(token) >= 3 and key.startswith(token))):
                    mass[k] += float(np.exp(entry["logprob"]))
        with np.errstate(divide="ignore"):
            return np.where(mass > 0, np.log(np.maximum(mass, 1e-300)), MISSING_LOGPROB)


def _content(reply: dict[str, Any]) -> str:
    try:
        return str(reply["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        raise LLMError(f"not a chat completion: {str(reply)[:200]}") from None
