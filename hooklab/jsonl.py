"""Reading JSONL: one JSON value per line, lines split on ``"\\n"`` only.

hooklab writes JSONL with ``json.dumps(..., ensure_ascii=False)``, which leaves U+2028,
U+2029, ``\\x85``, ``\\x0c`` and other characters that :meth:`str.splitlines` treats as line
breaks unescaped inside strings. Every JSONL reader in hooklab therefore splits here, on
``"\\n"`` alone (a ``"\\r"`` before it is dropped), so what one part of hooklab writes another
can read back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hooklab.errors import HooklabError

__all__ = ["jsonl_lines", "parse_jsonl", "read_jsonl"]


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """Each non-blank line of ``text`` with its number from 1, split on ``"\\n"`` only."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line


def parse_jsonl(text: str, origin: str) -> list[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of ``text``.

    Raises:
        HooklabError: naming ``origin`` and the line that is not valid JSON.
    """
    values = []
    for number, line in jsonl_lines(text):
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise HooklabError(
                f"{origin}, line {number}: not valid JSON ({error.msg}); fix or delete the line."
            ) from None
    return values


def read_jsonl(path: str | Path) -> list[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of the UTF-8 file ``path``.

    Raises:
        HooklabError: naming the file when it cannot be read or a line is not valid JSON.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise HooklabError(f"{path}: cannot read the JSONL file ({error}).") from None
    return parse_jsonl(text, str(path))
