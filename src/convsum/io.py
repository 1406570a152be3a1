"""Small file helpers: every artifact is written to a temp file and renamed, never half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the artifact gets normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a staging folder beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp creates 0700
    try:
        yield staging
        _normal_permissions(staging)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _normal_permissions(root: Path) -> None:
    # Some writers (safetensors' save, mkstemp) create 0600 files; artifacts get what the umask gives.
    mask = _umask()
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


def read_utf8(path: str | Path) -> str:
    """A text file's contents, or a one-line ConvsumError if it is missing or not UTF-8."""
    from convsum.errors import ConvsumError

    p = Path(path)
    if not p.is_file():
        raise ConvsumError(f"{p}: no such file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise ConvsumError(f"{p}:{line}: not valid UTF-8") from None


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """A YAML file's contents, or a one-line ConvsumError naming the file (and line) that is wrong."""
    import yaml

    from convsum.errors import ConvsumError

    p = Path(path)
    if not p.is_file():
        raise ConvsumError(f"{p}: {what} not found")
    try:
        return yaml.safe_load(read_utf8(p))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConvsumError(f"{p}{line}: invalid YAML ({getattr(e, 'problem', None) or e})") from None


def jsonl_objects(text: str, where: str) -> list[tuple[int, dict]]:
    """(line number, object) per non-blank line; a bad line is a ConvsumError naming `where:line`."""
    from convsum.errors import ConvsumError

    rows = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConvsumError(f"{where}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ConvsumError(f"{where}:{n}: expected a JSON object, got {type(obj).__name__}")
        rows.append((n, obj))
    return rows


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def clean_text(text: str) -> str:
    """The one text normalisation, applied to dialogues and summaries when data is read and to every
    dialogue a model is given (train, evaluate, summarize, serve): CRLF/CR -> LF, trailing spaces of
    each line and blank lines at both ends removed. Everything else (emoji included) is kept as is."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()
