"""The corpus: the King James Version from Debian's ``bible-kjv-text``, cleaned into chapters of prose.

Provenance: ``bible -f "Gen1:1-Rev22:21"`` (Debian packages ``bible-kjv`` + ``bible-kjv-text``) prints the
31,102 verses of the KJV, one per line, each prefixed by a reference such as ``Ge1:1``. The text is in the
public domain (the package's copyright file: the text's copyright has expired); the retrieval program is
GPL, and only its output is used here.

Cleaning: the verse references are removed, the verses of one chapter are joined into one paragraph, each
chapter is preceded by a heading line (``Genesis 1``), whitespace is collapsed. The last 5 % (cut at a
chapter boundary) is the held-out evaluation text; the rest is the training text.

    python models/recipe/prepare_corpus.py --out .device_data            # corpus.txt, train.txt, heldout.txt
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

BIBLE_RANGE = "Gen1:1-Rev22:21"
EXPECTED_VERSES = 31102
HELDOUT_FRACTION = 0.05

# The 66 books in canonical order; `bible` abbreviates them (Ge, Exo, ... Rev) in the same order.
BOOKS = [
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "1 Samuel",
    "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra", "Nehemiah", "Esther", "Job",
    "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah", "Lamentations", "Ezekiel",
    "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai",
    "Zechariah", "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians",
    "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
    "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James", "1 Peter", "2 Peter",
    "1 John", "2 John", "3 John", "Jude", "Revelation",
]
VERSE = re.compile(r"^(?P<book>[1-3]?[A-Za-z]+)(?P<chapter>\d+):(?P<verse>\d+) (?P<text>.*)$")


def fetch_verses() -> list[str]:
    """The raw verse lines from the ``bible`` program (one-line error with the fix when it is missing)."""
    if shutil.which("bible") is None:
        sys.exit("error: the `bible` program is missing: apt-get install bible-kjv  (it pulls in bible-kjv-text)")
    out = subprocess.run(["bible", "-f", BIBLE_RANGE], check=True, capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    if len(lines) != EXPECTED_VERSES:
        sys.exit(f"error: `bible -f {BIBLE_RANGE}` printed {len(lines)} verses, expected {EXPECTED_VERSES}")
    return lines


def chapters_from_verses(lines: list[str]) -> list[tuple[str, list[str]]]:
    """``[(heading, [verse text, ...]), ...]`` in order, headings like ``Genesis 1``."""
    abbreviations: list[str] = []
    chapters: list[tuple[str, list[str]]] = []
    current = None
    for line in lines:
        m = VERSE.match(line)
        if m is None:
            raise ValueError(f"unexpected line from `bible`: {line[:60]!r}")
        book = m["book"]
        if not abbreviations or abbreviations[-1] != book:
            abbreviations.append(book)
        key = (book, m["chapter"])
        if key != current:
            chapters.append((f"{BOOKS[len(abbreviations) - 1]} {m['chapter']}", []))
            current = key
        chapters[-1][1].append(" ".join(m["text"].split()))
    if len(abbreviations) != len(BOOKS):
        raise ValueError(f"found {len(abbreviations)} books, expected {len(BOOKS)}")
    return chapters


def format_chapters(chapters: list[tuple[str, list[str]]]) -> list[str]:
    """One block per chapter: heading line, then the chapter as one paragraph."""
    return [f"{heading}\n{' '.join(verses)}\n" for heading, verses in chapters]


def split_heldout(blocks: list[str], fraction: float = HELDOUT_FRACTION) -> tuple[str, str]:
    """``(train, heldout)``: held-out = the chapters at the end making up ``fraction`` of the bytes."""
    total = sum(len(b.encode()) for b in blocks)
    tail, i = 0, len(blocks)
    while i > 0 and tail < fraction * total:
        i -= 1
        tail += len(blocks[i].encode())
    return "\n".join(blocks[:i]), "\n".join(blocks[i:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for corpus.txt, train.txt, heldout.txt")
    args = parser.parse_args(argv)
    blocks = format_chapters(chapters_from_verses(fetch_verses()))
    corpus = "\n".join(blocks)
    train, heldout = split_heldout(blocks)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in (("corpus.txt", corpus), ("train.txt", train), ("heldout.txt", heldout)):
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"{name}: {len(text.encode()):,} bytes")
    print(f"{len(blocks)} chapters; held-out starts at {heldout.splitlines()[0]!r}")


if __name__ == "__main__":
    main()
