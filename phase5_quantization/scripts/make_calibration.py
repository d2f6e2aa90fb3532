"""Write ``calibration_kjv.txt``: every 40th chapter of the bundled model's *training* text (28 chapters,
Genesis to 2 Corinthians), the calibration text of AWQ and GPTQ. Never the held-out text (Colossians –
Revelation).

    python models/recipe/prepare_corpus.py --out /tmp/kjv        # needs `bible` (apt-get install bible-kjv)
    python -m phase5_quantization.scripts.make_calibration /tmp/kjv/train.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "calibration_kjv.txt"
FIRST, EVERY = 7, 40


def chapters(train_text: str) -> list[str]:
    """The training text's chapters: a heading line followed by the chapter's one paragraph."""
    lines = [line for line in train_text.split("\n") if line.strip()]
    if len(lines) % 2:
        raise SystemExit("unexpected training text: expected heading / paragraph line pairs")
    return [f"{lines[i]}\n{lines[i + 1]}\n" for i in range(0, len(lines), 2)]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    blocks = chapters(Path(argv[0]).read_text())
    picked = blocks[FIRST::EVERY]
    OUT.write_text("".join(picked))
    print(f"{OUT}: {len(picked)} chapters ({picked[0].splitlines()[0]} … {picked[-1].splitlines()[0]}), "
          f"{OUT.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
