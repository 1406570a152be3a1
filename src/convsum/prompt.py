"""The one prompt template, turned into token ids the same way for train, evaluate, summarize and serve.

The template is split around `{dialogue}` and each piece is tokenized on its own, so the dialogue
can be truncated in token space without ever touching the instruction or the summary, and the
prompt a model sees at inference is token-for-token the prompt it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convsum.errors import ConvsumError
from convsum.io import clean_text

IGNORE_INDEX = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


_MARK = "\ue000convsum-dialogue\ue000"  # a private-use marker no template or tokenizer will produce by itself
_REPLY = "\ue000convsum-reply\ue000"


def split_template(template: str) -> tuple[str, str]:
    """(text before, text after) the {dialogue} placeholder, literal braces unescaped (str.format rules):
    the one reading of a template that training, the GGUF chat template and the Ollama Modelfile share."""
    head, _, tail = template.format(dialogue=_MARK).partition(_MARK)
    return head, tail


class PromptFormatter:
    """format "template": the template text as is. format "chat": the template text becomes the user turn
    of the tokenizer's own chat template (with its generation prompt), and the summary ends with the
    template's end-of-turn token, which is then where generation stops."""

    def __init__(self, tokenizer, template: str, format: str = "template"):
        if "{dialogue}" not in template:
            raise ConvsumError("prompt template must contain {dialogue}")
        if tokenizer.eos_token_id is None:
            raise ConvsumError("the tokenizer has no EOS token; the model could not learn where to stop")
        self.tokenizer, self.template, self.format = tokenizer, template, format
        text = _MARK.join(split_template(template))
        self.bos = tokenizer("", add_special_tokens=True)["input_ids"]  # [<bos>] or [] (GPT-2 style)
        self.eos = tokenizer.eos_token_id
        if format == "chat":
            text, self.eos = self._chat(text)
        head, _, tail = text.partition(_MARK)
        # The dialogue is tokenized on its own, so it can be cut in token space without touching the rest.
        self.head = self._enc(head)
        if format != "chat" or (self.bos and self.head[: len(self.bos)] != self.bos):
            self.head = self.bos + self.head
        self.tail = self._enc(tail)
        self.stop_ids = list(dict.fromkeys([self.eos, tokenizer.eos_token_id]))  # generation ends at either

    def _chat(self, user_text: str) -> tuple[str, int]:
        """(the prompt rendered by the chat template, the end-of-turn token that follows a reply)."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ConvsumError("prompt.format=chat: this tokenizer has no chat template; use prompt.format=template")
        user = [{"role": "user", "content": user_text}]
        text = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        if text.count(_MARK) != 1:
            raise ConvsumError("prompt.format=chat: the chat template does not keep the user message verbatim")
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": _REPLY}], tokenize=False)
        after = self._enc(full.partition(_REPLY)[2].lstrip())
        return text, after[0] if after else tok.eos_token_id

    def _enc(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def dialogue_ids(self, dialogue: str) -> list[int]:
        return self._enc(clean_text(dialogue))  # the same normalisation the data loader applies

    def prompt_ids(self, dialogue: str | list[int], max_prompt_tokens: int) -> tuple[list[int], bool]:
        """Prompt ids with the dialogue (text, or its `dialogue_ids`) cut at its end so the whole prompt
        fits; returns (ids, truncated)."""
        d = self.dialogue_ids(dialogue) if isinstance(dialogue, str) else dialogue
        budget = max_prompt_tokens - len(self.head) - len(self.tail)
        if budget < 1:
            raise ConvsumError(f"the prompt template alone is {len(self.head) + len(self.tail)} tokens, "
                               f"over the limit of {max_prompt_tokens}")
        truncated = len(d) > budget
        return self.head + d[:budget] + self.tail, truncated

    def build_train(self, dialogue: str, summary: str, max_length: int) -> Example:
        """input_ids = prompt + summary + EOS (or end-of-turn); labels mask the prompt so only the summary
        and its end are learned."""
        target = self._enc(clean_text(summary)) + [self.eos]
        room = max_length - len(target)
        if room < len(self.head) + len(self.tail) + 1:
            raise ConvsumError(f"a summary of {len(target) - 1} tokens leaves no room for the dialogue within "
                               f"data.max_length={max_length}; raise data.max_length")
        prompt, truncated = self.prompt_ids(dialogue, room)
        return Example(prompt + target, [IGNORE_INDEX] * len(prompt) + target, truncated)


def collate(examples: list[dict], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Left-pad a training batch: every row's summary + EOS then ends at the last position, so the LM head
    can run on just the last k positions (see train.SummaryTrainer). Explicit position ids keep each row's
    positions starting at 0, exactly as with right padding. `multiple` rounds the padded length up (shape
    buckets: fewer distinct shapes for kernels that are compiled per shape)."""
    ids, mask = left_pad([e["input_ids"] for e in examples], pad_id, multiple)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, e in enumerate(examples):
        labels[i, ids.shape[1] - len(e["labels"]):] = torch.tensor(e["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": position_ids(mask)}


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(seqs: list[list[int]], pad_id: int, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts for generation so every row's next token is at the same position."""
    n = -(-max(len(s) for s in seqs) // multiple) * multiple
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):] = torch.tensor(s)
        mask[i, n - len(s):] = 1
    return ids, mask
