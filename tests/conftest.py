"""Shared fixtures: a tiny randomly initialised Gemma-3-architecture model with a byte-level BPE
tokenizer trained in the test, so every stage runs end to end on CPU in seconds. The builders live
in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import SHARED_DATA, build_tiny_model, tiny_overrides, write_data_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gemma-chat"), chat=True)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return write_data_dir(tmp_path / "data")


@pytest.fixture
def tiny_cfg(tiny_model_dir, data_dir, tmp_path):
    """A config for fast runs on the tiny model; tests tweak fields as needed."""
    from convsum.config import load_config

    return load_config(None, tiny_overrides(tiny_model_dir, data_dir, tmp_path / "run"))


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "dialogsum.test.jsonl").is_file():
        pytest.skip(f"DialogSum not found at {SHARED_DATA} (it is never copied into the repo)")
    return SHARED_DATA


