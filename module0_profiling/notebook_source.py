"""The lessons' notebooks are generated from Python scripts (``<phase>/scripts/make_notebook.py``): this is
the one helper they share — collect markdown and code cells, write ``<phase>/notebook.ipynb`` without outputs.

    nb = NotebookSource()
    md, code = nb.md, nb.code
    md(r\"\"\"# Title ...\"\"\")
    code(r\"\"\"x = 1\"\"\")
    nb.write(Path(__file__).resolve().parents[1])   # the phase directory
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

METADATA = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}}


class NotebookSource:
    def __init__(self) -> None:
        self.cells: list = []

    def md(self, text: str) -> None:
        self.cells.append(nbf.v4.new_markdown_cell(text.strip()))

    def code(self, text: str) -> None:
        self.cells.append(nbf.v4.new_code_cell(text.strip()))

    def write(self, directory: Path) -> Path:
        """``directory/notebook.ipynb`` (overwritten); prints where it went."""
        path = Path(directory) / "notebook.ipynb"
        nbf.write(nbf.v4.new_notebook(cells=self.cells, metadata=METADATA), str(path))
        print(f"wrote {path}")
        return path
