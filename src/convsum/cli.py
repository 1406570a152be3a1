"""The `convsum` command: a thin table of subcommands, each calling a stage's `main`.

Flags map onto config fields (default < --config YAML < flag); `--set section.field=value` reaches
any field. A stage given a run folder starts from that run's resolved config.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path

from convsum.errors import ConvsumError

# Shorthand flags for the most used config fields; their help text and type come from the field itself.
FLAGS = {
    "model": "model.name", "data": "data.source", "output": "train.output_dir", "max_steps": "train.max_steps",
    "max_train_examples": "data.max_train_examples", "max_new_tokens": "generate.max_new_tokens",
    "num_beams": "generate.num_beams", "batch_size": "generate.batch_size", "strategy": "generate.strategy",
    "engine": "generate.engine", "host": "serve.host", "port": "serve.port", "dtype": "merge.dtype",
    "outtype": "export.outtype", "repo_id": "publish.repo_id", "revision": "publish.revision",
    "report_output": "report.output",
}
# On/off flags: (field, the value the flag sets).
SWITCHES = {"adapter_only": ("export.adapter_only", True), "no_check": ("export.check", False),
            "private": ("publish.private", True)}


def _common(p: argparse.ArgumentParser, *flags: str) -> None:
    from convsum.config import field_doc, field_type

    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any config field, e.g. --set lora.r=8 (repeatable; `convsum config` lists them)")
    for f in flags:
        if f in SWITCHES:
            dotted, value = SWITCHES[f]
            p.add_argument("--" + f.replace("_", "-"), dest=f, action="store_const", const=value,
                           help=f"{field_doc(dotted).split('. ')[0].rstrip('.')} ({dotted}={str(value).lower()})")
            continue
        dotted = FLAGS[f]
        numeric = int in (field_type(dotted), *typing.get_args(field_type(dotted)))
        name = "--output" if f == "report_output" else "--" + f.replace("_", "-")
        p.add_argument(name, dest=f, type=int if numeric else str,
                       help=f"{field_doc(dotted).split('. ')[0].rstrip('.')} ({dotted})")


def _overrides(args) -> dict[str, str]:
    """Flags, then --set FIELD=VALUE items (later wins), as {field: value} for load_config."""
    overrides = {dotted: getattr(args, f) for f, dotted in FLAGS.items() if getattr(args, f, None) is not None}
    overrides.update({dotted: getattr(args, f) for f, (dotted, _) in SWITCHES.items()
                      if getattr(args, f, None) is not None})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConvsumError(f"--set {item!r}: expected FIELD=VALUE")
        overrides[key.strip()] = value
    return overrides


def _config(args, run_dir: str | None = None, preset: dict | None = None):
    """default < preset < --config YAML (or, given a run folder, the run's own config) < flags."""
    from convsum.config import load_config
    from convsum.rundir import RunDir

    path = args.config
    folder = RunDir(Path(run_dir).parent if str(run_dir).endswith(".gguf") else run_dir) if run_dir else None
    if path is None and folder and folder.config.is_file():  # a run, merged or GGUF export folder
        path = folder.config
    return load_config(path, _overrides(args), preset=preset, flag_names=_flag_names(args))


def _flag_names(args) -> dict[str, str]:
    """field -> the flag that set it, as errors name it: '--outtype (export.outtype)'."""
    names = {d: f for f, d in FLAGS.items()} | {d: f for f, (d, _) in SWITCHES.items()}
    return {d: f"--{'output' if f == 'report_output' else f.replace('_', '-')} ({d})" for d, f in names.items()
            if getattr(args, f, None) is not None}


def cmd_data(args):
    from convsum import data

    data.main(_config(args))


def cmd_train(args):
    from convsum import train

    run = args.output if args.resume else None
    result = train.main(_config(args, run_dir=run), resume=args.resume)
    return 130 if result.get("interrupted") else 0


def cmd_evaluate(args):
    from convsum import evaluate

    evaluate.main(_config(args, run_dir=args.target), target=args.target, base=args.base, split=args.split,
                  limit=args.limit, output=args.eval_output, compare_base=args.compare_base,
                  allow_train_data=args.allow_train_data)


def cmd_score(args):
    from convsum import evaluate

    evaluate.score_main(_config(args), args.predictions, split=args.split, as_json=args.json, against=args.against)


def cmd_summarize(args):
    from convsum import generate

    if args.target is None and not args.base:
        raise ConvsumError("give a RUN_DIR (or model folder/id) to summarize with, or --base")
    generate.main(_config(args, run_dir=args.target), args.target, args.input, base=args.base, as_json=args.json)


def cmd_demo(args):
    from convsum import demo

    demo.main(_config(args, preset=demo.DEMO_OVERRIDES), data=args.data, output=args.output or "runs/demo")


def cmd_merge(args):
    from convsum import merge

    merge.main(args.run_dir, args.merge_output, cfg=_config(args, run_dir=args.run_dir))


def cmd_push(args):
    from convsum import publish

    publish.main(args.folder, cfg=_config(args, run_dir=args.folder), dry_run=args.dry_run)


def cmd_serve(args):
    from convsum import serve

    target = args.adapter or args.target
    cfg = _config(args, run_dir=target)
    if args.adapter and args.target:
        cfg.model.name = args.target  # MODEL is the base the adapter goes on
    serve.main(cfg, target, compare_base=args.compare_base)


def cmd_export(args):
    from convsum import export

    if args.format != "gguf":
        raise ConvsumError(f"--format {args.format!r}: only gguf is supported")
    export.main(args.target, output=args.export_output, cfg=_config(args, run_dir=args.target))


def cmd_sweep(args):
    from convsum import sweep

    sweep.main(_config(args), args.grid, args.sweep_output)


def cmd_report(args):
    from convsum import report

    cfg = _config(args)
    report.main(args.runs, cfg.report.output, cfg=cfg)


def cmd_config(args):
    from convsum.config import field_docs

    for name, default, doc in field_docs():
        print(f"{name} = {default!r}\n    {doc}")


def _run_commands(sub) -> None:
    """The lab's main path: demo, data, train, evaluate, score, summarize."""
    p = sub.add_parser("demo", help="base vs LoRA fine-tuned on held-out dialogues, offline (the main job)")
    _common(p, "model", "data", "output")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("data", help="validate a dataset and print length statistics")
    _common(p, "model", "data")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="LoRA fine-tuning into a run folder")
    _common(p, "model", "data", "output", "max_steps", "max_train_examples")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="generate for a split and score ROUGE")
    p.add_argument("target", nargs="?", help="run folder, merged model folder or model id")
    _common(p, "model", "data", "max_new_tokens", "strategy", "num_beams", "batch_size", "engine")
    p.add_argument("--base", action="store_true", help="evaluate the base model (no adapter)")
    p.add_argument("--compare-base", action="store_true", help="also evaluate the base model; one table")
    p.add_argument("--split", default="test", help="test, validation, train, or held-out (the run's held-out slice)")
    p.add_argument("--limit", type=int, help="first N dialogues of the split")
    p.add_argument("--output", dest="eval_output", help="folder for the predictions and metrics (default: inside the run folder)")
    p.add_argument("--allow-train-data", action="store_true",
                   help="score a run on the file or split it was trained on (refused otherwise)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="score a predictions file (.txt or .jsonl) without a model")
    p.add_argument("predictions")
    _common(p, "data")
    p.add_argument("--split", default="test", help="test, validation or held-out (the slice a run with --config "
                   "RUN/config.yaml held out)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--against", metavar="PRED_B", help="compare with another predictions file (paired bootstrap)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("summarize", help="summarize dialogues from a JSONL file or stdin")
    p.add_argument("target", nargs="?", help="run folder, merged model folder or model id")
    p.add_argument("input", nargs="?", default="-", help="JSONL file ({\"dialogue\": ...} per line), text file, or -")
    _common(p, "model", "max_new_tokens", "strategy", "num_beams", "batch_size", "engine")
    p.add_argument("--base", action="store_true", help="use the base model without the adapter")
    p.add_argument("--json", action="store_true", help="print one JSON object per summary")
    p.set_defaults(func=cmd_summarize)


def _ship_commands(sub) -> None:
    """What happens to a trained model: merge, push, serve, export."""
    p = sub.add_parser("merge", help="merge a run's adapter into its base: a standalone model folder")
    p.add_argument("run_dir")
    p.add_argument("--output", dest="merge_output", required=True, help="new folder for the merged model")
    _common(p, "dtype")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("push", help="upload a run's adapter or a merged model to the Hugging Face Hub")
    p.add_argument("folder", help="run folder (adapter only) or merged model folder")
    _common(p, "repo_id", "private", "revision")
    p.add_argument("--dry-run", action="store_true", help="list files and show the card; upload nothing")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("serve", help="HTTP API + a page to try the summarizer (127.0.0.1 by default)")
    p.add_argument("target", nargs="?", help="run folder, merged model folder or model id")
    p.add_argument("--adapter", help="run folder whose adapter goes on MODEL")
    p.add_argument("--compare-base", action="store_true", help="also load the base model; the page shows both")
    _common(p, "host", "port", "max_new_tokens", "strategy", "num_beams", "engine")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="GGUF for llama.cpp / Ollama / LM Studio, checked against the model")
    p.add_argument("target", help="run folder or merged model folder")
    p.add_argument("--format", default="gguf", help="gguf (the only format)")
    p.add_argument("--output", dest="export_output", help="folder to write (default: TARGET/gguf)")
    _common(p, "outtype", "adapter_only", "no_check")
    p.set_defaults(func=cmd_export)


def _experiment_commands(sub) -> None:
    p = sub.add_parser("sweep", help="grid of runs, selected on a held-out slice of the training data")
    _common(p, "model", "data", "max_steps", "max_train_examples")
    p.add_argument("--grid", required=True, help="YAML mapping config fields to value lists")
    p.add_argument("--output", dest="sweep_output", required=True, help="sweep folder (one run folder per combination)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="HTML + Markdown report (curves, ROUGE, lengths, best/worst examples)")
    p.add_argument("runs", nargs="+", help="run folders")
    _common(p, "report_output")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("config", help="list every config field with its default and meaning")
    p.set_defaults(func=cmd_config)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="convsum", description="Fine-tune a causal LM with LoRA to summarize conversations.")
    sub = ap.add_subparsers(dest="command", required=True)
    _run_commands(sub)
    _ship_commands(sub)
    _experiment_commands(sub)
    return ap


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import transformers

    # peft calls a transformers API deprecated in v5; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        from convsum.modeling import limit_kernel_cache

        limit_kernel_cache()
        code = args.func(args)
    except ConvsumError as e:
        print(f"convsum: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convsum: interrupted", file=sys.stderr)
        return 130
    finally:
        _close_process_group()
    return code or 0


def _close_process_group() -> None:
    # Under torchrun, exiting with the gloo group still open can abort a rank at teardown
    # ("terminate called without an active exception"); close it once the command is done.
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
