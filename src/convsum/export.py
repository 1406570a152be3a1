"""Export stage: GGUF files for llama.cpp, Ollama and LM Studio, checked before success is reported.

    convsum export runs/r1 --format gguf                    # merged model, f16: runs/r1/gguf/
    convsum export runs/r1 --format gguf --outtype q8_0 --output exports/r1
    convsum export runs/r1 --format gguf --adapter-only     # base GGUF + the LoRA as a GGUF (llama.cpp --lora)
    convsum export runs/r1 --set export.check_dialogues=100 # the check's knobs are config fields (export.*)

The conversion is llama.cpp's own `convert_hf_to_gguf.py` / `convert_lora_to_gguf.py`, vendored
unmodified in convsum/vendor/llama_cpp and run as a subprocess (they need their own `gguf-py`).
A run's adapter is first merged (checks.merge_adapter, the merge stage's check). The output folder holds the
GGUF, convsum.json (prompt template, stop tokens, decoding settings: what `--engine llamacpp`
reads), the tokenizer (prompts are built token for token as in training), an Ollama Modelfile and a
README with the llama.cpp / Ollama commands.

The check: the GGUF runs in llama.cpp (xllamacpp) on fixed dialogues and must give the same greedy
summaries as the transformers model for f32 (identical, or the export fails); for f16/bf16/q8_0 the
agreement on them is printed, and the agreement and ROUGE-L difference on the run's held-out slice
(bar: export.rouge_bar, 0.5 ROUGE-L, or nothing is written). f16 is the default: on the shipped recipe's run q8_0 moved
held-out ROUGE-L by -1.07 (21/40 summaries identical) and f16 by +0.42 (38/40; bench/RESULTS.md).
"""

from __future__ import annotations

import tempfile
import time
from copy import deepcopy
from dataclasses import asdict, replace
from pathlib import Path

from convsum import checks
from convsum.config import Config, load_config, save_config
from convsum.engines import require_gguf_extra
from convsum.errors import ConvsumError
from convsum.gguf_files import OUTTYPES, conversion_folder, modelfile, readme, run_converter
from convsum.inference import load_summarizer
from convsum.io import atomic_dir, atomic_write_json, atomic_write_text
from convsum.modeling import resolve
from convsum.rundir import GGUF_INFO, Kind, RunDir, kind_of, read_model_info, write_model_folder


def main(target: str, outtype: str | None = None, output: str | None = None, adapter_only: bool | None = None,
         check: bool | None = None, check_limit: int | None = None, cfg: Config | None = None) -> dict:
    """Export `target` (a run folder or a merged/full model folder) as `cfg.export` says (keyword
    arguments, where given, win); returns what was written and the check's figures."""
    given = {"outtype": outtype, "adapter_only": adapter_only, "check": check, "check_dialogues": check_limit}
    ex = replace((cfg or load_config()).export, **{k: v for k, v in given.items() if v is not None})
    require_gguf_extra()
    if ex.outtype not in OUTTYPES:
        raise ConvsumError(f"export.outtype {ex.outtype!r}: expected one of {', '.join(OUTTYPES)}")
    t0 = time.perf_counter()
    out = Path(output) if output else Path(target) / "gguf"
    with tempfile.TemporaryDirectory(prefix="convsum-export-") as tmp_name:
        tmp = Path(tmp_name)
        src, info, run = _source(target, tmp, ex.adapter_only)
        settings = _settings(run, src, info)
        # The reference: the model itself, greedy, in fp32 (bf16 autocast would make it differ from an f32 GGUF
        # on bf16 CPUs), whatever the run decodes with.
        model_cfg = deepcopy(settings)
        model_cfg.generate = replace(model_cfg.generate, strategy="greedy", num_beams=1, engine="transformers",
                                     bf16="false")
        reference = load_summarizer(str(run.path if ex.adapter_only else src), model_cfg)
        base_dir = Path(resolve(model_cfg.model)[0])
        with atomic_dir(out) as staging:
            files = _convert(target, src, base_dir, info, ex, tmp, staging)
            gguf_info = _write_beside(staging, files, info, target, reference, settings, ex)
            result = {"output": str(out), "files": files, "outtype": ex.outtype}
            if ex.check:
                held_out = _held_out(run, ex)
                model_cfg.generate.batch_size = ex.check_batch_size
                result["check"] = checks.check_gguf(staging, reference, ex.outtype, held_out, model_cfg)
                checks.judge_gguf(result["check"], ex.outtype, ex.rouge_bar)
                atomic_write_json(staging / GGUF_INFO, {**gguf_info, "check": result["check"]})
    sizes = {k: (out / v).stat().st_size for k, v in files.items()}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"convsum: wrote {out}/ ({', '.join(f'{v} {sizes[k] / 1e6:.0f} MB' for k, v in files.items())}, "
          f"Modelfile, README.md) in {result['seconds']:.0f} s")
    return result


def _source(target: str, tmp: Path, adapter_only: bool) -> tuple[Path, dict, RunDir | None]:
    """(model folder to convert, its convsum.json, the run it came from)."""
    kind = kind_of(target)
    if kind is Kind.RUN:
        run = RunDir(target)
        if run.has_full_model():
            if adapter_only:
                raise ConvsumError(f"{target} was fully fine-tuned: there is no adapter to export (drop --adapter-only)")
            return run.model, read_model_info(run.model), run
        if not run.has_adapter():
            raise ConvsumError(f"{target}: no trained adapter yet")
        if adapter_only:
            return run.adapter, read_model_info(run.adapter), run
        merged, tokenizer, cfg, run_info, check = checks.merge_adapter(run.path)
        write_model_folder(tmp / "merged", merged, tokenizer, cfg, run_info.get("base_revision"), Kind.MERGED,
                           {"merged_from": str(run.path.resolve()), "dtype": "float32", "merge_check": check})
        return tmp / "merged", read_model_info(tmp / "merged"), run
    if kind is not None and kind.standalone and not adapter_only:
        merged_from = read_model_info(target).get("merged_from")
        run = RunDir(merged_from) if merged_from and kind_of(merged_from) is Kind.RUN else None
        return Path(target), read_model_info(target), run
    if kind is not None:
        raise ConvsumError(f"{target}: give the run folder to export an adapter")
    raise ConvsumError(f"{target}: not a convsum run folder or merged model folder")


def _settings(run: RunDir | None, src: Path, info: dict) -> Config:
    """The model's own settings: its run's config, else the model folder's config.yaml, else the prompt
    its convsum.json records on top of the defaults."""
    if run:
        cfg = run.read()[0]
    elif RunDir(src).config.is_file():
        cfg = RunDir(src).read_config()
    else:
        cfg = load_config(preset={"prompt.template": info["prompt_template"],
                                  "prompt.format": info.get("prompt_format", "template")})
    cfg.model.name = info["base_model"]
    return cfg


def _convert(target: str, src: Path, base_dir: Path, info: dict, ex, tmp: Path, staging: Path) -> dict:
    files = {"model": f"{'base' if ex.adapter_only else 'model'}-{ex.outtype}.gguf"}
    model_dir = base_dir if ex.adapter_only else src
    print(f"convsum: converting {model_dir} to GGUF ({ex.outtype}) with llama.cpp's converter...", flush=True)
    run_converter("convert_hf_to_gguf.py", [str(conversion_folder(model_dir, info["base_model"], tmp, info)),
                                            "--outtype", ex.outtype, "--outfile", str(staging / files["model"]),
                                            "--model-name", Path(target).resolve().name])
    if ex.adapter_only:
        files["adapter"] = "adapter-f32.gguf"  # a q8_0 LoRA drifted badly in llama.cpp; adapters are small
        run_converter("convert_lora_to_gguf.py", [str(src), "--base", str(base_dir), "--outtype", "f32",
                                                  "--outfile", str(staging / files["adapter"])])
    return files


def _write_beside(staging: Path, files: dict, info: dict, target: str, reference, settings: Config, ex) -> dict:
    """Tokenizer, config.yaml (the model's settings; decoding runs on llama.cpp), convsum.json, Modelfile, README."""
    reference.tokenizer.save_pretrained(staging)
    saved = deepcopy(settings)
    saved.generate.engine = "llamacpp"
    saved.export = ex
    save_config(saved, RunDir(staging).config)
    gguf_info = {"kind": Kind.GGUF.value, "gguf": files["model"], "adapter": files.get("adapter"), "outtype": ex.outtype,
                 "base_model": info["base_model"], "source": str(Path(target).resolve()),
                 "prompt_template": info["prompt_template"], "prompt_format": info.get("prompt_format", "template"),
                 "stop_tokens": [reference.tokenizer.convert_ids_to_tokens(t) for t in reference.fmt.stop_ids],
                 "generate": info.get("generate", settings.generate.settings()), "export": asdict(ex)}
    atomic_write_json(staging / GGUF_INFO, gguf_info)
    atomic_write_text(staging / "Modelfile", modelfile(files["model"], gguf_info))
    atomic_write_text(staging / "README.md", readme(gguf_info))
    return gguf_info


def _held_out(run: RunDir | None, ex) -> list | None:
    """The run's held-out slice (first export.check_dialogues) for non-f32 types: their summaries may differ."""
    if run is None or ex.outtype == "f32" or not ex.check_dialogues:
        return None
    from convsum.data import train_and_held_out

    return train_and_held_out(run.read()[0])[2][:ex.check_dialogues]
