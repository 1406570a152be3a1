"""What a GGUF export is made of, apart from the check: llama.cpp's converter scripts (vendored) and the
folder they convert, the chat template, the Ollama Modelfile and the README with the commands.
convsum.card uses `usage` for the model card of a GGUF export.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

from convsum.config import BUNDLED_MODEL
from convsum.errors import ConvsumError
from convsum.io import atomic_write_json, read_json
from convsum.modeling import bundled_sentencepiece
from convsum.prompt import split_template
from convsum.rundir import GGUF_INFO

OUTTYPES = ("f16", "q8_0", "bf16", "f32")


def converter_dir() -> Path:
    return Path(str(resources.files("convsum") / "vendor" / "llama_cpp"))


def run_converter(script: str, args: list[str]) -> None:
    """One of llama.cpp's converter scripts, as a subprocess; a failure is one line with its last words."""
    proc = subprocess.run([sys.executable, str(converter_dir() / script), *args], capture_output=True, text=True,
                          env={**os.environ, "NO_LOCAL_GGUF": ""} if "NO_LOCAL_GGUF" in os.environ else None)
    if proc.returncode:
        last = next((ln for ln in reversed(proc.stderr.strip().splitlines()) if ln.strip()), "no output")
        raise ConvsumError(f"llama.cpp's {script} failed: {last[:300]}")


def chat_template(prompt_template: str) -> str:
    """Our prompt as a Jinja chat template: llama.cpp's chat endpoints and LM Studio then wrap a user
    message (the dialogue) in the training prompt by themselves. (BOS is added by llama.cpp.) Literal
    braces become string expressions: llama.cpp's Jinja has no {% raw %}."""
    head, tail = split_template(prompt_template)
    literal = lambda s: s.replace("{", '{{ "{" }}')  # noqa: E731  (a lone "}" is plain text in Jinja)
    ending = tail[len(tail.rstrip("\n")):]  # Jinja drops a template's final newline; keep it as an expression
    return (literal(head) + "{{ messages[-1]['content'] }}" + literal(tail.rstrip("\n"))
            + ('{{ "' + ending.replace("\n", "\\n") + '" }}' if ending else ""))


def conversion_folder(model_dir: Path, base_model: str, tmp: Path, info: dict) -> Path:
    """`model_dir` as the converter needs it: symlinks to its files; our prompt as the chat template
    (unless the model is prompted through its own chat template); and a SentencePiece tokenizer.model
    for Gemma models saved without one (the converter cannot read Gemma's tokenizer.json)."""
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
    # Go templates: a lone brace is text; a literal "{{" would open an action, so it is written as one.
    head, tail = (t.replace("{{", '{{ "{{" }}') for t in split_template(info["prompt_template"]))
    template = head + "{{ .Prompt }}" + tail
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
