"""A Hugging Face causal language model through ``transformers`` (``hf:NAME``, a hub
name or a local folder): PyTorch, any device, the model's own chat template.

Scoring is exact (the last position's logits). Generation is greedy and *not*
constrained: with a schema the reply is checked and refused if it does not parse;
use ``local:`` (a grammar) or ``openai:`` (``response_format``) where JSON must come
out every time. No KV cache is kept between prompts.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np

from modrec.llm.model import LLMError, Message, OptionTokens, option_logprobs, require_json


class HFModel:
    def __init__(self, name: str, device: str = "cpu") -> None:
        try:
            import torch  # noqa: F401
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as err:
            raise LLMError(f"hf: models need transformers ({err}); pip install "
                           "transformers") from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.model = AutoModelForCausalLM.from_pretrained(name).to(device).eval()  # type: ignore[arg-type]
        except (OSError, ValueError) as err:
            raise LLMError(f"could not load the Hugging Face model {name!r}: {err}") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise LLMError(f"{name!r} has no chat template; use an instruction-tuned model")
        self.device = device
        self.spec = f"hf:{name}"
        config = json.dumps(self.model.config.to_dict(), sort_keys=True, default=str)
        revision = getattr(self.model.config, "_commit_hash", None) or \
            hashlib.sha256(config.encode()).hexdigest()[:16]
        self.fingerprint = f"hf:{name}@{revision}"
        tokenizer = self.tokenizer
        self._options = OptionTokens(
            [str(tokenizer.decode([t])) for t in range(len(tokenizer))],
            lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
        self.stats = {"prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0}

    def tokens(self, messages: list[Message]) -> list[int]:
        prefill = ""
        if messages and messages[-1]["role"] == "assistant":
            messages, prefill = messages[:-1], messages[-1]["content"]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
        return list(self.tokenizer(str(text) + prefill, add_special_tokens=False)["input_ids"])

    def score(self, messages: list[Message], options: list[str]) -> np.ndarray:
        import torch

        tokens = self.tokens(messages)
        started = time.perf_counter()
        with torch.no_grad():
            ids = torch.tensor([tokens], device=self.device)  # (1, T)
            logits = self.model(input_ids=ids).logits[0, -1]  # (V,)
        self.stats["seconds"] += time.perf_counter() - started
        self.stats["prompt_tokens"] += len(tokens)
        return option_logprobs(logits.float().cpu().numpy(), self._options.ids(options))

    def complete(self, messages: list[Message], schema: dict[str, Any] | None = None,
                 max_tokens: int = 256) -> str:
        import torch

        tokens = self.tokens(messages)
        started = time.perf_counter()
        with torch.no_grad():
            ids = torch.tensor([tokens], device=self.device)
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=max_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id
                                      or self.tokenizer.eos_token_id)
        new = out[0, len(tokens):].tolist()
        self.stats["seconds"] += time.perf_counter() - started
        self.stats["prompt_tokens"] += len(tokens)
        self.stats["generated_tokens"] += len(new)
        text = str(self.tokenizer.decode(new, skip_special_tokens=True))
        if schema is not None:
            require_json(text, f"{self.spec} wrote no valid JSON ({text[:120]!r}); the hf: "
                               "backend cannot constrain output, use local: or openai: for "
                               "JSON")
        return text
