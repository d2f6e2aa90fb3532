"""User-facing errors: one line that names the problem and the fix, never a traceback.

The CLI catches ``ModelError`` (bad model spec, missing or corrupt files, wrong architecture, prompt too long)
and prints ``error: <message>`` with exit code 2. Library callers get the exception. The loaders read files
through ``read_text`` / ``read_json`` and state each expectation with ``require``, so a corrupt checkpoint
fails with ``<file>: <what is wrong>: <fix>`` instead of a ``KeyError`` deep inside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ModelError(ValueError):
    """A user mistake about the model or the request (not a bug in TitanInfer)."""


def require(condition: object, file: str | Path, message: str) -> None:
    """Raise ``ModelError("<file>: <message>")`` unless ``condition`` holds; ``message`` ends with the fix."""
    if not condition:
        raise ModelError(f"{file}: {message}")


def first_line(error: BaseException, limit: int = 160) -> str:
    """A foreign exception (safetensors, tokenizers, json) squeezed into one short clause."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]


def read_text(file: str | Path) -> str:
    """The UTF-8 text of ``file``; unreadable or non-UTF-8 bytes are one ``ModelError``."""
    try:
        return Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{file} cannot be read as UTF-8 text ({first_line(e)}): re-download it") from None


def read_json(file: str | Path) -> dict[str, Any]:
    """The JSON object ``{...}`` in ``file``; invalid JSON or another JSON type is one ``ModelError``."""
    try:
        data = json.loads(read_text(file))
    except json.JSONDecodeError as e:
        raise ModelError(f"{file} is not valid JSON ({e}): fix the file or re-download it") from None
    require(isinstance(data, dict), file, f"holds a JSON {type(data).__name__}, not an object {{...}}: "
            "fix the file or re-download it")
    return data
