"""llama.cpp in process, on SmolLM2: constrained JSON, first-token scoring, the KV
prefix cache, prefills and the errors a user meets first."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from modrec.llm import LLMError, open_llm, option_probabilities

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def ask(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


def test_schema_constrained_output_always_parses(smollm):
    # A 135M model rarely writes valid JSON on its own; the grammar makes it.
    schema = {"type": "object", "additionalProperties": False,
              "required": ["labels", "year"],
              "properties": {"labels": {"type": "array", "minItems": 1, "maxItems": 3,
                                        "items": {"type": "string",
                                                  "enum": ["Comedy", "Drama", "Horror"]}},
                             "year": {"type": "integer"}}}
    for prompt in ["Toy Story (1995), a comedy about toys. Genres and year?",
                   "Which genres fit a film about a haunted house?", "Say something."]:
        reply = json.loads(smollm.complete(ask(prompt), schema, max_tokens=64))
        assert set(reply) == {"labels", "year"} and isinstance(reply["year"], int)
        assert 1 <= len(reply["labels"]) <= 3
        assert set(reply["labels"]) <= {"Comedy", "Drama", "Horror"}


def test_scoring_ranks_an_obvious_option_above_an_absurd_one(smollm):
    question = ask("What is the capital of France? Answer with one word.")
    written = smollm.score(question, ["Paris", "Banana"])
    assert option_probabilities(written)[0] > 0.9
    for animal in ["Which of these is an animal: dog or table? Answer with one word.",
                   "Which of these is an animal: table or dog? Answer with one word."]:
        dog, table = option_probabilities(smollm.score(ask(animal), ["dog", "table"]))
        assert dog > table
    # case does not matter: "paris" is read from the tokens "Paris", " Paris", ...
    np.testing.assert_allclose(smollm.score(question, ["paris", "banana"]), written)


def test_prefix_cache_evaluates_only_the_new_tail_and_changes_no_score(smollm_file):
    from modrec.llm.local import LlamaCppModel

    cached = LlamaCppModel(smollm_file, threads=1, context=2048)
    fresh = LlamaCppModel(smollm_file, threads=1, context=2048, prefix_cache=False)
    prompts = [ask(f"Movie: a cartoon about toys. Answer yes or no: is it a {genre} film?")
               for genre in ("Animation", "Comedy", "Horror", "War")]
    with_cache = np.array([cached.score(p, ["yes", "no"]) for p in prompts])
    without = np.array([fresh.score(p, ["yes", "no"]) for p in prompts])
    # the same numbers (up to the float order of a batch vs one token), far less work
    np.testing.assert_allclose(option_probabilities(with_cache),
                               option_probabilities(without), atol=0.03)
    assert cached.stats["evaluated_tokens"] < 0.5 * fresh.stats["evaluated_tokens"]
    assert fresh.stats["evaluated_tokens"] == fresh.stats["prompt_tokens"]
    # the same prompt again evaluates one token (the logits are recomputed, not stale)
    before = cached.stats["evaluated_tokens"]
    np.testing.assert_allclose(cached.score(prompts[-1], ["yes", "no"]), with_cache[-1],
                               atol=0.05)
    assert cached.stats["evaluated_tokens"] == before + 1


@pytest.mark.slow
def test_batched_scoring_matches_one_by_one_and_leaves_the_cache_usable(smollm_file):
    from modrec.llm.local import MAX_SEQUENCES, LlamaCppModel
    from modrec.llm.model import score_all

    batched = LlamaCppModel(smollm_file, threads=1, context=2048)
    single = LlamaCppModel(smollm_file, threads=1, context=2048, prefix_cache=False)
    words = ["Animation", "Comedy", "Horror", "War", "Drama", "Western", "Romance"]
    # more prompts than the context's free sequences: scored in two batches
    labels = [f"{w}{n}" for n in range(6) for w in words][:MAX_SEQUENCES + 5]
    prompts = [[*ask("Movie: a cartoon about toys. Which genres apply?"),
                {"role": "assistant", "content": f"{label}:"}] for label in labels]
    together = score_all(batched, prompts, ["yes", "no"])
    apart = np.stack([single.score(p, ["yes", "no"]) for p in prompts])
    assert together.shape == (len(labels), 2)
    # llama.cpp's kernels sum in another order for a batch of many short tails than
    # for one prompt, which moves a 135M model's P(yes) by a few hundredths at most
    difference = np.abs(option_probabilities(together) - option_probabilities(apart))
    assert difference.max() < 0.1 and difference.mean() < 0.02
    # the shared part was evaluated once, not once per prompt
    assert batched.stats["evaluated_tokens"] < 0.2 * single.stats["evaluated_tokens"]
    # afterwards one-by-one scoring continues from the shared part and agrees
    before = batched.stats["evaluated_tokens"]
    again = batched.score(prompts[3], ["yes", "no"])
    np.testing.assert_allclose(option_probabilities(again), option_probabilities(apart[3]),
                               atol=0.03)
    assert batched.stats["evaluated_tokens"] - before < len(batched.tokens(prompts[3])) // 2


def test_a_prefill_is_the_start_of_the_reply(smollm):
    plain = smollm.tokens(ask("Name a colour."))
    prefilled = smollm.tokens([*ask("Name a colour."),
                               {"role": "assistant", "content": "Colour:"}])
    assert prefilled[:len(plain)] == plain and len(prefilled) > len(plain)
    assert smollm.score([*ask("Name a colour."), {"role": "assistant", "content": "Colour:"}],
                        ["red", "blue"]).shape == (2,)


def test_options_that_start_with_the_same_token_are_refused(smollm):
    with pytest.raises(ValueError, match="same token"):
        smollm.score(ask("Pick one."), ["yes", "Yes"])


def test_a_prompt_longer_than_the_context_is_a_clear_error(smollm_file):
    from modrec.llm.local import LlamaCppModel

    small = LlamaCppModel(smollm_file, threads=1, context=256)
    with pytest.raises(LLMError, match="does not fit the context"):
        small.score(ask("word " * 400), ["yes", "no"])


def test_missing_file_and_missing_runtime_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="local:PATH.gguf, openai:URL#MODEL or hf:NAME"):
        open_llm("nonsense")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if it were not installed
    with pytest.raises(LLMError, match="pip install --no-cache-dir"):
        open_llm(f"local:{tmp_path / 'model.gguf'}")


def test_missing_model_file(tmp_path):
    pytest.importorskip("llama_cpp")
    with pytest.raises(LLMError, match="no GGUF model file"):
        open_llm(f"local:{tmp_path / 'absent.gguf'}")
