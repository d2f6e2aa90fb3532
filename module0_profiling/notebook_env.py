"""The first line of every lesson notebook: import the phases as the installed packages they are.

Jupyter starts a notebook's kernel in the notebook's folder and puts that folder on ``sys.path``, so a
phase's own sub-folders become top-level modules: ``phase0_prototype/kernels/`` is then found as
``kernels``, which shadows the Hugging Face package of that name that ``transformers`` imports
(``ImportError: cannot import name 'CUDAProperties' from 'kernels'``). The project is installed
(``pip install -e .``), so every phase imports by its package name from anywhere; the folder entry
only does harm. Standard library only: phase 5's notebook sets ``TRITON_INTERPRET`` after this.
"""

from __future__ import annotations

import os
import sys


def import_phases_as_packages() -> None:
    """Drop the notebook's folder ('' or its absolute path) from ``sys.path``; the files stay readable."""
    here = os.path.realpath(os.getcwd())
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != here]


def your_module(phase: str) -> tuple[str, bool]:
    """Print the phase's targets (its ``checks.TARGETS``) and which module the lesson's "your turn" cells run:
    ``(<phase>.mine, True)`` once the learner has copied the framework to ``mine.py``, else
    ``("framework", False)`` with the command that starts it."""
    import importlib
    import importlib.util

    targets = importlib.import_module(f"{phase}.checks").TARGETS
    width = max(len(t.threshold) for t in targets)
    for t in targets:
        print(f"{t.id}  {t.threshold:{width}s}  {t.description}")
    mine = f"{phase}.mine"
    have = importlib.util.find_spec(mine) is not None
    print("\nyour module:", mine if have else
          f"not there yet (the cells below use the framework): cp {phase}/framework.py {phase}/mine.py")
    return (mine, True) if have else ("framework", False)
