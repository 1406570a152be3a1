"""Regenerate notebooks/walkthrough.ipynb (outputs cleared): python notebooks/make_walkthrough.py"""

from pathlib import Path

import nbformat as nbf

cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))  # noqa: E731
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))  # noqa: E731

md("""
# convsum walkthrough: fine-tune a small LM to summarize conversations

The lab, step by step, with the `convsum` Python API (every step is also a `convsum` command).
Settings are tiny so the whole notebook runs on a laptop CPU in a few minutes with the bundled
Gemma 3 270M; raise `MAX_STEPS` and the limits for real results (see the README).
""")
code("""
import os, tempfile
from pathlib import Path

from convsum.config import load_config
from convsum.data import load_split, split_stats
from convsum.demo import sample_path

ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
SHARED = ROOT.parent / "shared" / "data" / "dialogsum"
DATA = str(SHARED) if (SHARED / "dialogsum.dev.jsonl").is_file() else str(sample_path())
WORK = Path(tempfile.mkdtemp(prefix="convsum-nb-"))
MAX_STEPS = 4          # raise for a real run
print("data:", DATA, "\\nwork folder:", WORK)
""")
md("""
## 1. Load and inspect DialogSum
A folder with `dialogsum.{train,dev,test}.jsonl`, a JSONL/CSV file, or a Hub dataset id. Records are
validated; problems are reported with file, line and field.
""")
code("""
cfg = load_config(ROOT / "configs" / "gemma3-270m-lora.yaml", {"data.source": DATA, "train.output_dir": str(WORK / "run")})
split = "validation" if DATA == str(SHARED) else "train"
records = load_split(cfg.data, split)
print(len(records), "records in", split)
print(records[0].dialogue[:500], "\\n--- summary:", records[0].summary)
""")
md("""
## 2. Token lengths
How long are dialogues and summaries in the model's tokens, and how many would `data.max_length` truncate?
""")
code("""
from convsum.modeling import load_tokenizer
import statistics
import matplotlib.pyplot as plt

tokenizer = load_tokenizer(cfg.model)
stats = split_stats(records, tokenizer, cfg)
print("dialogue tokens: median", statistics.median(stats["dialogue_tokens"]), "max", max(stats["dialogue_tokens"]))
print("summary tokens:  median", statistics.median(stats["summary_tokens"]), "max", max(stats["summary_tokens"]))
print("truncated at max_length", cfg.data.max_length, ":", stats["truncated"])
plt.hist(stats["dialogue_tokens"], bins=30); plt.title("dialogue length (tokens)"); plt.show()
""")
md("""
## 3. Model and LoRA
The base model is frozen; LoRA adds small trainable matrices to the chosen linear layers.
""")
code("""
from convsum.modeling import load_model, add_lora, trainable_parameters

model = add_lora(load_model(cfg.model), cfg.lora)
n_train, n_total = trainable_parameters(model)
print(f"LoRA r={cfg.lora.r}, alpha={cfg.lora.alpha}, targets={cfg.lora.target_modules}")
print(f"trainable: {n_train:,} of {n_total:,} parameters ({100 * n_train / n_total:.2f}%)")
del model
""")
md("""
## 4. The prompt
One template, shared by training, evaluation and serving. Only the summary and EOS are learned.
""")
code("""
from convsum.prompt import PromptFormatter

fmt = PromptFormatter(tokenizer, cfg.prompt.template)
ex = fmt.build_train(records[0].dialogue, records[0].summary, cfg.data.max_length)
print(tokenizer.decode(ex.input_ids[:len(ex.input_ids) - sum(l != -100 for l in ex.labels)])[-120:])
print("learned tokens:", repr(tokenizer.decode([l for l in ex.labels if l != -100])))
""")
md("## 5. A short training run")
code("""
from convsum import train

cfg.train.max_steps = MAX_STEPS
cfg.train.batch_size = 4
cfg.train.grad_accum = 1
cfg.data.max_train_examples = 4 * MAX_STEPS
cfg.data.val_size = 4
cfg.train.save_steps = cfg.train.eval_steps = MAX_STEPS
cfg.train.select_by, cfg.train.early_stopping_patience = "last", 0  # the recipe picks by held-out ROUGE-L; 4 steps keep the last
summary = train.main(cfg)
summary
""")
md("## 6. Inference on unseen dialogues")
code("""
from convsum.inference import load_summarizer

unseen = ["#Person1#: Did you water the plants?\\n#Person2#: Oh no, I forgot. I'll do it right after lunch.",
          "#Person1#: The printer is jammed again.\\n#Person2#: I'll call the technician; use the one upstairs for now."]
tuned = load_summarizer(cfg.train.output_dir, cfg)
for d, s in zip(unseen, tuned(unseen)):
    print(d, "\\n->", s, "\\n")
""")
md("""
## 7. Base vs fine-tuned
ROUGE against every reference (on the test split when DialogSum is present, else on the sample).
""")
code("""
from convsum import evaluate

eval_split = "test" if DATA == str(SHARED) else "train"
results = evaluate.main(cfg, target=cfg.train.output_dir, split=eval_split, limit=4, compare_base=True)
""")
md("## 8. Merge the adapter into the base")
code("""
from convsum import merge

merged = merge.main(cfg.train.output_dir, str(WORK / "merged"), dtype="bfloat16")
sorted(p.name for p in (WORK / "merged").iterdir())
""")
md("## 9. Publish (dry run: lists the files and shows the model card; uploads nothing)")
code("""
from convsum import publish

publish.main(cfg.train.output_dir, "your-name/gemma3-270m-dialogsum-lora", dry_run=True);
""")
md("""
## 10. Try it: change r, alpha, the learning rate or the prompt, and compare
Each variant is a normal run; compare held-out loss (never choose by test scores). `convsum sweep`
does this for whole grids.
""")
code("""
import copy

variants = {"r4-lr1e-4": {"lora.r": 4, "lora.alpha": 8, "train.learning_rate": 1e-4},
            "r16-lr4e-4": {"lora.r": 16, "lora.alpha": 32, "train.learning_rate": 4e-4},
            "short prompt": {"prompt.template": "Dialogue:\\n{dialogue}\\nSummary:\\n"}}
from convsum.config import set_field
for name, changes in variants.items():
    c = copy.deepcopy(cfg)
    for k, v in changes.items():
        set_field(c, k, v)
    c.train.max_steps = 2
    c.train.output_dir = str(WORK / name.replace(" ", "-"))
    s = train.main(c)
    print(f"{name:>12}: held-out loss {s['eval_loss']:.3f}")
""")

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"] = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
nbf.write(nb, Path(__file__).with_name("walkthrough.ipynb"))
print("wrote notebooks/walkthrough.ipynb")
