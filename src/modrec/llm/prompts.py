"""Versioned prompt templates, one YAML file each in ``prompts/``.

A template has a ``version`` (part of every cache key and provenance record: change the
wording, bump the version, and nothing cached under the old wording is reused), a
``system`` and a ``user`` message with ``{placeholders}``, optionally ``assistant``: the
start of the reply, written for the model (a prefill; scoring then reads the token
after it), and ``example``: how one few-shot example is written. `Prompt.render` fills
them in; values are inserted as they are (braces in an item's text are not
placeholders).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from string import Formatter
from typing import Any

import yaml

from modrec.llm.model import Message


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    system: str
    user: str
    assistant: str = ""
    example: str = ""

    def render(self, **values: Any) -> list[Message]:
        missing = {f for text in (self.system, self.user, self.assistant)
                   for _, f, _, _ in Formatter().parse(text) if f and f not in values}
        if missing:
            raise KeyError(f"prompt {self.version!r} needs {', '.join(sorted(missing))}")
        messages = [{"role": "system", "content": self.system.format(**values)},
                    {"role": "user", "content": self.user.format(**values)}]
        if self.assistant:
            messages.append({"role": "assistant", "content": self.assistant.format(**values)})
        return messages


def load_prompt(name: str) -> Prompt:
    """The template ``prompts/<name>.yaml`` shipped with modrec."""
    folder = resources.files("modrec.llm") / "prompts"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        have = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                      if p.name.endswith(".yaml"))
        raise ValueError(f"no prompt {name!r}; have {', '.join(have)}")
    data = yaml.safe_load(path.read_text())
    return Prompt(name=name, version=str(data["version"]), system=data["system"].strip(),
                  user=data["user"].strip(), assistant=data.get("assistant", "").strip(),
                  example=data.get("example", "").strip())
