"""Print the engine's comparison table from a committed report in the README's form.

    python shared/scripts/readme_table.py reports/shared/h100-80gb-hbm3.md

Links are rewritten from the report's (``../../phase0_prototype/``) to the repository root's, the long
"how it runs" column is dropped (a SKIP row keeps its reason), and the report is linked under the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

TITLE = "### The engine, phase by phase"


def readme_table(report: Path) -> str:
    text = report.read_text()
    if TITLE not in text:
        raise SystemExit(f"{report} has no '{TITLE}' table: pass a reports/shared/<device>.md")
    block = text.split(TITLE, 1)[1].split("\n\n")[1]
    out = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|---"):
            out.append("|---|---|---|---|---|---|")
            continue
        if cells[1] == "SKIP":
            cells = cells[:2] + [f"— ({cells[-1]})", "", "", ""]
        out.append("| " + " | ".join(c.replace("](../../", "](") for c in cells[:6]) + " |")
    device = text.split("Machine: ", 1)[1].split(" · ", 1)[0] if "Machine: " in text else report.stem
    return "\n".join(out) + f"\n\nMeasured on {device} in one run: [the report]({report.as_posix()})."


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python shared/scripts/readme_table.py reports/shared/<device>.md")
    print(readme_table(Path(sys.argv[1])))
