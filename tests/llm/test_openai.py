"""The OpenAI-compatible client against a canned server in this process (dialects,
log-probs, retries, a dead or hanging server) and against llama-cpp-python's real
server on SmolLM2 in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from modrec.llm import LLMError, open_llm, option_probabilities  # noqa: E402
from modrec.llm.model import MISSING_LOGPROB  # noqa: E402
from support import free_port, serve_in_thread

ASK = [{"role": "user", "content": "Is this a comedy?"}]
SCHEMA = {"type": "object", "properties": {"labels": {"type": "array"}},
          "required": ["labels"]}


class Canned:
    """What the fake server saw and how it should misbehave."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_next = 0  # answer 503 this many times
        self.delay = 0.0
        self.plain = False  # answer text even when a JSON object is asked for


def _app(canned: Canned) -> Any:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        canned.bodies.append(body)
        if canned.delay:
            import asyncio

            await asyncio.sleep(canned.delay)
        if canned.fail_next:
            canned.fail_next -= 1
            return JSONResponse({"error": "overloaded"}, status_code=503)
        form = body.get("response_format") or {}
        if form.get("type") == "json_schema":  # llama-cpp-python's server refuses it
            return JSONResponse({"detail": "type must be text or json_object"},
                                status_code=422)
        message = {"role": "assistant", "content": "Yes"}
        if form.get("type") == "json_object" and not canned.plain:
            message["content"] = json.dumps({"labels": ["Comedy"]})
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
        if body.get("logprobs"):
            top = [{"token": "Yes", "logprob": -0.2}, {"token": " yes", "logprob": -2.5},
                   {"token": "No", "logprob": -1.9}, {"token": "Com", "logprob": -4.0}]
            choice["logprobs"] = {"content": [{"token": "Yes", "logprob": -0.2,
                                               "top_logprobs": top}]}
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [choice], "usage": {"prompt_tokens": 7, "completion_tokens": 1}}

    return app


@pytest.fixture
def canned() -> Iterator[tuple[Canned, str]]:
    canned = Canned()
    for address in serve_in_thread(_app(canned)):
        yield canned, f"http://{address}/v1"


def test_schema_falls_back_to_the_json_object_dialect_once(canned):
    fake, url = canned
    llm = open_llm(f"openai:{url}#tiny")
    assert json.loads(llm.complete(ASK, SCHEMA)) == {"labels": ["Comedy"]}
    assert [b["response_format"]["type"] for b in fake.bodies] == ["json_schema",
                                                                   "json_object"]
    assert fake.bodies[-1]["response_format"]["schema"] == SCHEMA
    llm.complete(ASK, SCHEMA)  # the dialect that worked is remembered
    assert fake.bodies[-1]["response_format"]["type"] == "json_object"
    assert len(fake.bodies) == 3 and fake.bodies[0]["temperature"] == 0.0


def test_a_reply_that_is_not_json_is_refused_when_a_schema_was_sent(canned):
    fake, url = canned
    fake.plain = True  # a server that ignores response_format
    llm = open_llm(f"openai:{url}#tiny")
    with pytest.raises(LLMError, match=r"answered text that is not JSON although a schema "
                       r"was sent \('Yes'\); does the server support response_format\?$"):
        llm.complete(ASK, SCHEMA)


def test_score_reads_top_logprobs_without_case_or_space(canned):
    fake, url = canned
    llm = open_llm(f"openai:{url}#tiny")
    logprobs = llm.score(ASK, ["yes", "no", "maybe", "Comedy"])
    assert fake.bodies[-1]["max_tokens"] == 1 and fake.bodies[-1]["top_logprobs"] == 20
    np.testing.assert_allclose(np.exp(logprobs[0]), np.exp(-0.2) + np.exp(-2.5))
    np.testing.assert_allclose(logprobs[1], -1.9)
    assert logprobs[2] == MISSING_LOGPROB  # not among the top tokens
    np.testing.assert_allclose(logprobs[3], -4.0)  # "Com" begins "Comedy"
    assert option_probabilities(logprobs[:2])[0] > 0.8
    # a prefill is sent with vLLM's flags for continuing the last message
    llm.score([*ASK, {"role": "assistant", "content": "Comedy:"}], ["yes", "no"])
    assert fake.bodies[-1]["continue_final_message"] is True


def test_overload_is_retried_with_backoff(canned):
    fake, url = canned
    from modrec.llm.openai import OpenAIModel

    llm = OpenAIModel(url, "tiny", retries=2, backoff=0.01)
    fake.fail_next = 2
    assert llm.complete(ASK) == "Yes" and llm.stats["retries"] == 2
    fake.fail_next = 3
    with pytest.raises(LLMError, match="after 3 attempts.*HTTP 503"):
        llm.complete(ASK)


def test_a_hanging_server_times_out_with_a_clear_error(canned):
    fake, url = canned
    from modrec.llm.openai import OpenAIModel

    fake.delay = 3.0
    started = time.monotonic()
    with pytest.raises(LLMError, match="is the server running"):
        OpenAIModel(url, "tiny", timeout=0.3, retries=1, backoff=0.01).complete(ASK)
    assert time.monotonic() - started < 2.5


def test_a_dead_server_is_a_clear_error_not_a_hang():
    from modrec.llm.openai import OpenAIModel

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(LLMError, match=f"no answer from {url}.*is the server running"):
        OpenAIModel(url, "tiny", timeout=2, retries=2, backoff=0.01).score(ASK, ["yes", "no"])
    assert time.monotonic() - started < 5
    with pytest.raises(ValueError, match="openai:http"):
        open_llm("openai:127.0.0.1:8000")  # no scheme, no model


@pytest.fixture(scope="module")
def llama_server(smollm_file: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on SmolLM2, on a free loopback port."""
    import httpx

    port = free_port()
    log = (tmp_path_factory.mktemp("llama-server") / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm_file),
         "--n_threads", "1", "--n_ctx", "1024", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"llama_cpp.server exited; see {log.name}"
            assert time.monotonic() < deadline, "llama_cpp.server did not start in 120 s"
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_a_real_llama_cpp_server(llama_server):
    llm = open_llm(f"openai:{llama_server}#smollm2", timeout=60)
    schema = {"type": "object", "additionalProperties": False, "required": ["genre"],
              "properties": {"genre": {"type": "string", "enum": ["Comedy", "Horror"]}}}
    reply = json.loads(llm.complete([{"role": "user", "content": "Genre of a film about a "
                                      "haunted house?"}], schema, max_tokens=32))
    assert reply["genre"] in {"Comedy", "Horror"}
    logprobs = llm.score([{"role": "user", "content": "What is the capital of France? Answer "
                           "with one word."}], ["Paris", "Banana"])
    assert logprobs[0] > logprobs[1] and logprobs[0] > MISSING_LOGPROB
