"""User-facing errors: one line that names the problem and the fix, never a traceback.

The CLI catches ``ModelError`` (bad model spec, missing files, wrong architecture, prompt too long)
and prints ``error: <message>`` with exit code 2. Library callers get the exception.
"""

from __future__ import annotations


class ModelError(ValueError):
    """A user mistake about the model or the request (not a bug in TitanInfer)."""
