"""What the tests share, imported as `from helpers import ...` (pytest puts tests/ on sys.path):
synthetic DialogSum-style records, a tiny random Gemma-3 (byte-level BPE) and tiny Llama / Gemma-3
models with SentencePiece tokenizers built in the test, a config for fast runs, and the simulated kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import TrainerCallback

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dialogsum"

NAMES = ["Tom", "Anna", "the doctor", "the manager", "Mr. Lee", "Sara", "the clerk", "Bob"]
THINGS = ["a ticket", "a jacket", "the report", "a room", "some coffee", "a new phone", "the car", "a table"]
PLACES = ["the station", "the hotel", "the office", "the shop", "the library", "the bank"]


def make_records(n: int, offset: int = 0) -> list[dict]:
    """Synthetic dialogues whose summary is a simple function of the dialogue (learnable by a tiny model)."""
    rows = []
    for i in range(offset, offset + n):
        who, what, where = NAMES[i % len(NAMES)], THINGS[(i * 3) % len(THINGS)], PLACES[(i * 5) % len(PLACES)]
        turns = [f"#Person1#: Hello, I am {who}. I would like {what}.",
                 f"#Person2#: Sure. You can get {what} at {where}.",
                 "#Person1#: Thank you very much." + " It is a long day." * (i % 4)]
        rows.append({"fname": f"ex_{i}", "dialogue": "\n".join(turns),
                     "summary": f"{who} wants {what} and goes to {where}.", "topic": "errand"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                 "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>assistant\n{% endif %}")


def build_tiny_model(out: Path, chat: bool = False) -> Path:
    """A tiny random Gemma-3 model with a byte-level BPE tokenizer trained here (chat: with turn tokens
    and a Gemma-style chat template)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast
    import torch

    corpus = [r["dialogue"] + "\n" + r["summary"] for r in make_records(64)]
    corpus += ["Summarize the following conversation.\n\n### Conversation:\n\n\n### Summary:\n"] * 4
    special = ["<pad>", "<eos>", "<bos>", "<unk>"] + (["<start_of_turn>", "<end_of_turn>"] if chat else [])
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=special)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<eos>",
                                  bos_token="<bos>", unk_token="<unk>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                           sliding_window=64, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           bos_token_id=tok.bos_token_id, final_logit_softcapping=30.0)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    return out


def build_spm_model(out: Path, arch: str) -> Path:
    """A tiny random Llama or Gemma-3 with a SentencePiece tokenizer trained here (what llama.cpp's converter
    reads); logits sharpened so greedy decoding is not decided by near-ties. Gemma keeps llama.cpp's fixed
    choices: attention scale 1/sqrt(head_dim) and a sliding-window pattern of 6 layers."""
    import shutil

    import sentencepiece as spm
    import torch
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, GemmaTokenizer, LlamaConfig, LlamaForCausalLM,
                              LlamaTokenizer)

    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    rows = make_records(64)
    corpus.write_text("\n".join(r["dialogue"] + "\n" + r["summary"] for r in rows) +
                      "\nSummarize the following conversation.\n### Conversation:\n### Summary:\n")
    ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1) if arch == "llama" else dict(
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"])
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(out / "sp"), vocab_size=320, model_type="bpe",
                                   character_coverage=1.0, byte_fallback=True, minloglevel=2, **ids)
    shutil.copy(out / "sp.model", out / "tokenizer.model")
    tok = (LlamaTokenizer if arch == "llama" else GemmaTokenizer).from_pretrained(str(out))
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.1, bos_token_id=1,
            eos_token_id=2, tie_word_embeddings=False))
        with torch.no_grad():
            model.model.norm.weight.mul_(30.0)
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
            max_position_embeddings=1024, initializer_range=0.1, pad_token_id=0, eos_token_id=1, bos_token_id=2))
        with torch.no_grad():
            model.model.norm.weight.fill_(29.0)  # Gemma's RMSNorm scales by (1 + w)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)  # transformers 5 writes tokenizer.json only; tokenizer.model stays from above
    for f in ("sp.model", "sp.vocab", "corpus.txt"):
        (out / f).unlink()
    return out


def tiny_overrides(model_dir: Path, data_dir: Path, output_dir: Path) -> dict:
    """Config fields for fast runs on the tiny model (6 steps, checkpoints every 3, held-out 4)."""
    return {
        "model.name": str(model_dir), "data.source": str(data_dir), "data.val_size": 4,
        "data.max_length": 128, "train.output_dir": str(output_dir), "train.batch_size": 4, "train.grad_accum": 1,
        "train.max_steps": 6, "train.save_steps": 3, "train.logging_steps": 1, "train.eval_steps": 3,
        "train.learning_rate": 3e-3, "train.bf16": "false", "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0,
        "generate.max_new_tokens": 16, "generate.batch_size": 4, "generate.bf16": "false",
    }


def write_data_dir(d: Path) -> Path:
    """dialogsum.dev.jsonl (24 records) and dialogsum.test.jsonl (6, three references each)."""
    d.mkdir(parents=True, exist_ok=True)
    write_jsonl(d / "dialogsum.dev.jsonl", make_records(24))
    test = []
    for r in make_records(6, offset=100):
        test.append({"fname": r["fname"], "dialogue": r["dialogue"], "summary1": r["summary"],
                     "summary2": r["summary"].replace("wants", "asks for"), "summary3": r["summary"].split(" and ")[0] + "."})
    write_jsonl(d / "dialogsum.test.jsonl", test)
    return d


class Crash(TrainerCallback):
    """Simulates a kill: raises after `step` (no clean save)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise RuntimeError("killed")


def kill_then_resume(cfg, monkeypatch, at_step: int) -> dict:
    """Train with a simulated kill after `at_step`, then `--resume`; the resumed run's summary, plus
    whether the killed run had left final weights behind (it must not)."""
    from convsum import train
    from convsum.rundir import RunDir

    monkeypatch.setattr(train, "EXTRA_CALLBACKS", [Crash(at_step)])
    with pytest.raises(RuntimeError, match="killed"):
        train.main(cfg)
    monkeypatch.setattr(train, "EXTRA_CALLBACKS", [])
    run = RunDir(cfg.train.output_dir)
    left = run.adapter.exists() or run.model.exists()
    return {**train.main(cfg, resume=True), "first_run_left_weights": left}
