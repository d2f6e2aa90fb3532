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
