"""Typed configuration, loaded with precedence default < preset < YAML < CLI flag, checked, saved.

The sections themselves (one dataclass per concern, each field documented once) are in
convsum.settings and re-exported here, so `from convsum.config import Config, load_config` is the
one import a stage needs. `convsum config` lists every field; the CLI flags take their help text and
type from it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any

import pydantic
import yaml

from convsum.errors import ConvsumError
from convsum.settings import (BUNDLED_MODEL, DEFAULT_TEMPLATE, Config, DataConfig, DType, ExportConfig,  # noqa: F401
                              GenerateConfig, LoraConfig, MergeConfig, ModelConfig, PromptConfig, PublishConfig,
                              ReportConfig, ServeConfig, TrainConfig, Tristate, validate_generate)


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _list_spelling(value: str, tp: Any) -> bool:
    """'a,b' given for a list field (or for `str | list[str]`, when it has a comma)."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return any(typing.get_origin(a) is list for a in args) and (str not in args or "," in value)


@functools.lru_cache(maxsize=None)
def _validator(tp: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against a field's annotation with pydantic's lax mode, which accepts the YAML/CLI
    spellings ('1e-4', 'true', '8'); on top of it 'none' means None and 'a,b' is a list."""
    if isinstance(value, str) and value.strip().lower() in ("none", "null") and _optional(tp):
        return None
    if isinstance(value, str) and _list_spelling(value, tp):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, bool) and tp is Tristate:  # YAML reads `bf16: true` as a bool
        value = str(value).lower()
    try:
        return _validator(tp).validate_python(value)
    except pydantic.ValidationError as e:
        msg = e.errors()[0]["msg"]
        raise ConvsumError(f"{where}: {msg[0].lower() + msg[1:]} (got {value!r})") from None


def _section_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def field_type(dotted: str) -> Any:
    """The annotation of `section.field` (the CLI derives its flags' types from it)."""
    section, _, name = dotted.partition(".")
    return _section_types(type(getattr(Config(), section)))[name]


def field_doc(dotted: str) -> str:
    section, _, name = dotted.partition(".")
    return next(f.metadata["doc"] for f in dataclasses.fields(getattr(Config(), section)) if f.name == name)


def checked(value: Any, dotted: str) -> Any:
    """`value` as field `dotted` would take it (a Python caller's argument, checked like a flag)."""
    return _coerce(value, field_type(dotted), dotted)


def set_field(cfg: Config, dotted: str, value: Any, where: str = "") -> None:
    """Set `section.field` with type checking; unknown names are errors, not silently ignored."""
    where = where or dotted
    section, _, name = dotted.partition(".")
    sections = {f.name: f.type for f in dataclasses.fields(cfg)}
    if section not in sections or not name:
        raise ConvsumError(f"{where}: unknown config section {section!r} (expected one of: {', '.join(sections)})")
    obj = getattr(cfg, section)
    types_ = _section_types(type(obj))
    if name not in types_:
        raise ConvsumError(f"{where}: unknown field {dotted!r} (fields of {section}: {', '.join(types_)})")
    setattr(obj, name, _coerce(value, types_[name], where))


def update_from_dict(cfg: Config, data: Any, source: str) -> Config:
    if data is None:
        return cfg
    if not isinstance(data, dict):
        raise ConvsumError(f"{source}: expected a mapping of sections (model:, data:, train:, ...)")
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConvsumError(f"{source}: section {section!r} must be a mapping")
        for name, value in values.items():
            set_field(cfg, f"{section}.{name}", value, where=f"{source}: {section}.{name}")
    return cfg


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                preset: dict[str, Any] | None = None, flag_names: dict[str, str] | None = None) -> Config:
    """Defaults < `preset` (a stage's own defaults, e.g. the demo's) < the YAML file < `overrides`
    ({'train.max_steps': 10}, from CLI flags; `flag_names` says which flag set a field, for errors); validated."""
    cfg = Config()
    for dotted, value in (preset or {}).items():
        set_field(cfg, dotted, value)
    if path is not None:
        from convsum.io import read_yaml

        update_from_dict(cfg, read_yaml(path, "config file"), str(path))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_field(cfg, dotted, value, where=(flag_names or {}).get(dotted, f"--set {dotted}"))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that the type system can't express."""
    if "{dialogue}" not in cfg.prompt.template:
        raise ConvsumError("prompt.template: must contain the placeholder {dialogue}")
    try:
        cfg.prompt.template.format(dialogue="")
    except (KeyError, IndexError, ValueError) as e:
        raise ConvsumError(f"prompt.template: only {{dialogue}} may be a placeholder (write literal braces as "
                           f"{{{{ }}}}): {e}") from None
    checks = [
        (cfg.data.max_length >= 32, "data.max_length: must be at least 32"),
        (cfg.data.val_size is None or cfg.data.val_size >= 0, "data.val_size: must be >= 0"),
        (cfg.data.max_train_examples is None or cfg.data.max_train_examples >= 1,
         "data.max_train_examples: must be at least 1 (or none)"),
        (cfg.lora.r > 0 and cfg.lora.alpha > 0, "lora.r and lora.alpha: must be positive"),
        (0.0 <= cfg.lora.dropout < 1.0, "lora.dropout: must be in [0, 1)"),
        (cfg.train.batch_size > 0 and cfg.train.grad_accum > 0, "train.batch_size and train.grad_accum: must be positive"),
        (cfg.train.learning_rate > 0, "train.learning_rate: must be positive"),
        (cfg.train.pad_to_multiple_of >= 1, "train.pad_to_multiple_of: must be at least 1"),
        (cfg.train.freeze_layers >= 0, "train.freeze_layers: must be >= 0"),
        (cfg.train.neftune_alpha >= 0, "train.neftune_alpha: must be >= 0 (0 = off)"),
        (0.0 <= cfg.train.warmup_ratio < 1.0, "train.warmup_ratio: must be in [0, 1)"),
        (cfg.train.max_steps > 0 or cfg.train.epochs > 0, "train.epochs: must be positive when max_steps is -1"),
        (cfg.train.save_steps > 0 and cfg.train.logging_steps > 0, "train.save_steps and train.logging_steps: must be positive"),
        (cfg.train.select_by == "last" or (cfg.train.eval_steps > 0 and cfg.train.save_steps % cfg.train.eval_steps == 0),
         f"train.select_by={cfg.train.select_by} keeps the best evaluated checkpoint: train.eval_steps must be > 0 and "
         f"train.save_steps ({cfg.train.save_steps}) a multiple of it ({cfg.train.eval_steps})"),
        (cfg.train.select_by != "last" or cfg.train.early_stopping_patience == 0,
         "train.early_stopping_patience needs train.select_by eval_loss or rougeL"),
        (cfg.train.select_by == "last" or cfg.data.val_size != 0,
         f"train.select_by={cfg.train.select_by} needs a held-out slice (data.val_size is 0)"),
        (cfg.generate.batch_size >= 1, "generate.batch_size: must be >= 1"),
        (cfg.serve.max_batch >= 1 and cfg.serve.max_queue >= 1 and cfg.serve.max_body_bytes > 0,
         "serve.max_batch, serve.max_queue and serve.max_body_bytes: must be positive"),
        (0 < cfg.serve.port < 65536, "serve.port: must be 1-65535"),
        (cfg.merge.check_new_tokens >= 1 and cfg.merge.check_prompt_tokens >= 16,
         "merge.check_new_tokens must be >= 1 and merge.check_prompt_tokens >= 16"),
        (cfg.export.check_dialogues >= 0 and cfg.export.check_batch_size >= 1 and cfg.export.rouge_bar >= 0,
         "export.check_dialogues and export.rouge_bar must be >= 0, export.check_batch_size >= 1"),
        (cfg.report.examples >= 1, "report.examples: must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConvsumError(msg)
    validate_generate(cfg.generate)
    if isinstance(cfg.lora.target_modules, str) and cfg.lora.target_modules not in ("all-linear", "attention"):
        raise ConvsumError("lora.target_modules: must be 'all-linear', 'attention' or a list of module names")


def save_config(cfg: Config, path: Path) -> None:
    from convsum.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True, width=100))


def field_docs() -> list[tuple[str, Any, str]]:
    """(dotted name, default, doc) for every field: the single source for help text and the README."""
    rows = []
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(sec.default_factory()):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{sec.name}.{f.name}", default, f.metadata.get("doc", "")))
    return rows
