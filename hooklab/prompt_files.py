"""Prompt sets from local files: JSONL, CSV, Parquet and Arrow, with a column mapping.

A prompt set is one or more files of rows; a :class:`PromptColumns` mapping names the columns
that hold each prompt's text, id and category. A folder stands for every prompt file under it
(sorted by path), so a Hugging Face dataset downloaded (``data/train-00000-of-00001.parquet``)
or saved with ``Dataset.save_to_disk`` (``data-00000-of-00001.arrow``) is read as it lies.

Readers are a registry by format (:data:`READERS`); :func:`source_sha256` hashes the files'
bytes, which run manifests record beside the hash of the prompts themselves.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hooklab.errors import HooklabError
from hooklab.jsonl import parse_jsonl

__all__ = [
    "PromptColumns",
    "READERS",
    "SUFFIXES",
    "prompt_files",
    "read_rows",
    "source_sha256",
    "row_text",
    "row_field",
    "check_unicode",
]

#: A reader: (path, the columns it needs) -> rows as dicts (only the needed columns kept
#: where the format allows reading columns alone) and the file's column names.
Reader = Callable[[Path, list[str]], tuple[list[dict[str, Any]], list[str]]]


@dataclass(frozen=True)
class PromptColumns:
    """Which columns hold a prompt's text, id and category.

    ``text`` may hold a string, or a chat (a list of ``{"role", "content"}`` messages, as in
    many instruction datasets), whose first user message is the prompt. Without an ``id``
    column the ids are ``line-N`` (JSONL: the line number) or ``row-N`` (row number from 0).
    """

    text: str = "text"
    id: str = "id"
    category: str = "category"

    @property
    def is_default(self) -> bool:
        return self == PromptColumns()


def _read_jsonl(path: Path, needed: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    del needed  # JSONL is read whole
    text = _read_utf8(path)
    if text.lstrip().startswith("["):  # a JSON array of objects (Dataset.to_json(lines=False))
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise HooklabError(f"{path}: not valid JSON ({error.msg}).") from None
        rows = [(f"line-{i + 1}", r) for i, r in enumerate(records)]
    else:
        rows = [(f"line-{number}", value) for number, value in parse_jsonl(text, str(path))]
    out = []
    for where, record in rows:
        if not isinstance(record, dict):
            raise HooklabError(
                f"{path}, {where.replace('-', ' ')}: expected a JSON object per line, got "
                f"{json.dumps(record)[:60]!r}."
            )
        out.append({"__row__": where, **record})
    columns = list(dict.fromkeys(k for r in out for k in r if k != "__row__"))
    return out, columns


def _read_csv(path: Path, needed: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    import pandas as pd

    _read_utf8(path)  # a named error for a file that is not UTF-8
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise HooklabError(f"{path}: not a readable CSV file ({error}).") from None
    columns = [str(c) for c in frame.columns]
    keep = [c for c in needed if c in columns]
    return frame[keep].to_dict("records"), columns


def _read_parquet(path: Path, needed: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        columns = list(schema.names)
        table = pq.read_table(path, columns=[c for c in needed if c in columns])
    except Exception as error:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        raise HooklabError(f"{path}: not a readable Parquet file ({error}).") from None
    return table.to_pylist(), columns


def _read_arrow(path: Path, needed: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    import pyarrow as pa

    table, problem = None, None
    for open_ in (pa.ipc.open_stream, pa.ipc.open_file):  # save_to_disk writes the stream form
        try:
            with pa.memory_map(str(path)) as source:
                table = open_(source).read_all()
            break
        except (pa.ArrowInvalid, OSError) as error:  # a truncated file is an OSError
            problem = problem or error
    if table is None:
        raise HooklabError(
            f"{path}: not a readable Arrow IPC file ({problem}); it may be truncated: copy or "
            "save the dataset again."
        )
    columns = list(table.column_names)
    return table.select([c for c in needed if c in columns]).to_pylist(), columns


#: Readers by format name.
READERS: dict[str, Reader] = {
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "parquet": _read_parquet,
    "arrow": _read_arrow,
}

#: File suffix -> format.
SUFFIXES = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}


def _read_utf8(path: Path) -> str:
    """The file's text, or a HooklabError naming the first line that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise HooklabError(
            f"{path}, line {line}: not UTF-8 text (byte {data[error.start]:#04x}); save the "
            "prompt file as UTF-8."
        ) from None


def _format_of(path: Path, format: str) -> str:
    if format != "auto":
        if format not in READERS:
            raise HooklabError(
                f"prompts.format={format!r}: expected 'auto' or one of {sorted(READERS)}."
            )
        return format
    found = SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise HooklabError(
            f"prompts={str(path)!r}: cannot tell the format from the suffix {path.suffix!r}; "
            f"name the file *.jsonl, *.csv, *.parquet or *.arrow, or set prompts.format to one "
            f"of {sorted(READERS)}."
        )
    return found


def prompt_files(source: Path, format: str = "auto") -> list[tuple[Path, str]]:
    """The files of a prompt source with their formats: the file itself, or every file with a
    prompt-file suffix under a folder (sorted by path; one format only)."""
    if source.is_file():
        return [(source, _format_of(source, format))]
    if not source.is_dir():
        raise HooklabError(
            f"prompts={str(source)!r}: no such file or folder. Pass a JSONL, CSV, Parquet or "
            'Arrow file (or a folder of them), or one of "builtin", "builtin-large", '
            '"behaviour", "behaviour-tiny".'
        )
    files = sorted(
        p
        for p in source.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(source).parts)
        and p.name not in ("dataset_info.json", "state.json", "dataset_dict.json")
    )
    if not files:
        raise HooklabError(
            f"prompts={str(source)!r}: the folder holds no *.jsonl, *.csv, *.parquet or *.arrow "
            "file."
        )
    found = [(p, _format_of(p, format)) for p in files]
    formats = sorted({fmt for _, fmt in found})
    if len(formats) > 1:
        raise HooklabError(
            f"prompts={str(source)!r}: the folder mixes formats {formats}; point at one "
            "file or at a folder of one format (e.g. one split of a dataset)."
        )
    return found


def read_rows(
    source: Path, columns: PromptColumns, format: str = "auto"
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for every row of every file of ``source`` (``where`` names the file
    and row for error messages, and is the default id)."""
    files = prompt_files(source, format)
    needed = [columns.text, columns.id, columns.category]
    for path, fmt in files:
        rows, names = READERS[fmt](path, needed)
        if columns.text not in names and not (
            columns.is_default and fmt == "jsonl" and "prompt" in names
        ):
            raise HooklabError(
                f"{path}: no column {columns.text!r} for the prompt text; its columns are "
                f"{names[:20]}. Set prompts.text_column to the one that holds the prompt."
            )
        for explicit, name in ((columns.id, "id"), (columns.category, "category")):
            if explicit != getattr(PromptColumns(), name) and explicit not in names:
                raise HooklabError(
                    f"{path}: no column {explicit!r} (prompts.{name}_column); its columns are "
                    f"{names[:20]}."
                )
        prefix = "" if len(files) == 1 else f"{path.stem}:"
        for index, row in enumerate(rows):
            where = row.pop("__row__", None) or f"row-{index}"
            yield f"{prefix}{where}", row


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def row_text(row: dict[str, Any], columns: PromptColumns) -> Any:
    """The prompt text of a row: the text column (or, for default columns, ``prompt``); the
    first user message of a chat."""
    value = row.get(columns.text)
    if _missing(value) and columns.is_default:
        value = row.get("prompt")
    if isinstance(value, list | tuple) and value and all(isinstance(m, dict) for m in value):
        users = [m.get("content") for m in value if m.get("role") == "user"]
        value = users[0] if users else None
    return value


def row_field(row: dict[str, Any], column: str) -> str | None:
    """A row's id or category as a string; ``None`` where the column is absent or empty."""
    value = row.get(column)
    if _missing(value) or value == "":
        return None
    return str(value)


def check_unicode(value: str, where: str) -> str:
    """``value`` unchanged if it is valid Unicode (so it can be written as UTF-8).

    Raises:
        HooklabError: naming ``where`` when ``value`` holds a lone surrogate (what a JSON
            escape such as ``"\\ud800"`` without its pair decodes to).
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = value[error.start : error.end]
        raise HooklabError(
            f"{where}: holds the lone surrogate {bad!r} (at character {error.start}), which "
            "is not Unicode text and cannot be written; fix its \\u escape (a surrogate "
            "needs its pair) or remove it."
        ) from None
    return value


def source_sha256(source: str | Path, format: str = "auto") -> str:
    """SHA-256 of a prompt source's bytes: the file, or each file of a folder (its path
    relative to the folder, then its bytes, in sorted order)."""
    root = Path(source)
    digest = hashlib.sha256()
    for path, _ in prompt_files(root, format):
        if root.is_dir():
            digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
