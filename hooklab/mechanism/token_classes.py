"""A family-blind token classifier: every vocabulary id gets exactly one class.

The class of a token is decided from the tokenizer alone (its special tokens and each id's
decoded text), never from the model family. Rules, in priority order (the first that matches
wins, so the classes partition the vocabulary):

1. ``FORMAT`` (template and layout):

   * the tokenizer's special tokens (BOS, EOS, PAD, end-of-turn, ...) and added tokens marked
     special;
   * chat-template markers written as tags: ``<...>`` without spaces (``<start_of_turn>``,
     ``<|eot_id|>``, ``<｜end▁of▁sentence｜>``) and ``[INST]``-style ``[/UPPER_CASE]``;
   * empty or whitespace-only text (newlines, spaces, tabs);
   * list and Markdown markers once stripped of surrounding whitespace: ``-``, ``*``, ``+``,
     ``•``, ``#`` .. ``######``, one or two digits followed by ``.`` or ``)`` (``1.``, ``2)``),
     and runs of two or more of ``*``, ``_``, ``` ` ``` , ``-``, ``=`` (bold markers, code
     fences, rules).

2. ``NUMBER``: digits, optionally grouped by ``.`` or ``,`` between digits (``42``, ``3.14``,
   ``1,000``).
3. ``PUNCTUATION``: only punctuation and symbol characters (Unicode categories ``P*``, ``S*``).
4. ``FUNCTION``: the lower-cased stripped text is in :data:`FUNCTION_WORDS`, a fixed English
   list of articles, pronouns, prepositions, conjunctions, auxiliaries and modals, and
   contraction pieces (``'s``, ``n't``). A word piece that happens to spell a function word
   (``in`` of ``inside``) counts as one: a tokenizer does not say where words end.
5. ``CONTENT``: letters only (any script), with optional apostrophes or hyphens between letters
   or one leading apostrophe.
6. ``OTHER``: everything else: letters mixed with digits or punctuation, and (checked before
   rule 1 except for special tokens) partial UTF-8 bytes that decode to U+FFFD and control
   characters other than tab, newline, carriage return, vertical tab and form feed; also ids
   the tokenizer does not know (padding rows of a larger embedding matrix).

At analysis time two per-position classes are added by the callers, not by this module:
``teacher`` (the teacher's next token) and ``host_top1`` (the ungrafted host's top-1 token).
"""

from __future__ import annotations

import re
import unicodedata
from enum import IntEnum
from typing import Any

import numpy as np

from hooklab.errors import HooklabError

__all__ = [
    "TokenClass",
    "CLASS_NAMES",
    "DYNAMIC_CLASSES",
    "FUNCTION_WORDS",
    "classify_text",
    "classify_vocabulary",
]


class TokenClass(IntEnum):
    """Static token classes; the values are the codes :func:`classify_vocabulary` returns."""

    FORMAT = 0
    FUNCTION = 1
    PUNCTUATION = 2
    CONTENT = 3
    NUMBER = 4
    OTHER = 5


#: Lower-case names, indexed by code.
CLASS_NAMES: tuple[str, ...] = tuple(c.name.lower() for c in TokenClass)

#: Per-position classes added at analysis time.
DYNAMIC_CLASSES: tuple[str, ...] = ("teacher", "host_top1")

#: English function words: articles and determiners, pronouns, prepositions, conjunctions,
#: auxiliaries and modals, negation, and contraction pieces.
FUNCTION_WORDS: frozenset[str] = frozenset(
    """
    a an the this that these those some any each every no all both either neither another
    such what which whose whatever whichever
    i me my mine myself you your yours yourself yourselves he him his himself she her hers
    herself it its itself we us our ours ourselves they them their theirs themselves
    who whom one ones someone something anyone anything everyone everything nobody nothing
    there here
    about above across after against along among around as at before behind below beneath
    beside between beyond by despite down during except for from in inside into like near
    of off on onto out outside over past since through throughout to toward towards under
    until unto up upon via with within without
    and but or nor so yet because although though if unless while whereas whether than
    then when where why how once
    be am is are was were been being have has had having do does did doing done
    will would shall should can could may might must ought
    not n't 's 're 've 'll 'd 'm
    """.split()
)

_LAYOUT_CONTROLS = "\t\n\r\x0b\x0c"
_TAG = re.compile(r"<[^<>\s]+>|\[/?[A-Z_]+\]")
_LIST_MARKER = re.compile(r"[-*+•]|#{1,6}|\d{1,2}[.)]|[*_`\-=]{2,}")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"['’]?[^\W\d_]+(?:['’\-][^\W\d_]+)*")


def classify_text(text: str, *, special: bool = False) -> TokenClass:
    """The class of one token from its decoded text (see the module docstring for the rules).

    Args:
        text: the token's decoded text.
        special: whether the tokenizer marks the token as special.
    """
    if special:
        return TokenClass.FORMAT
    if "\ufffd" in text or any(
        unicodedata.category(ch) == "Cc" and ch not in _LAYOUT_CONTROLS for ch in text
    ):
        return TokenClass.OTHER
    stripped = text.strip()
    if not stripped or _TAG.fullmatch(stripped) or _LIST_MARKER.fullmatch(stripped):
        return TokenClass.FORMAT
    if _NUMBER.fullmatch(stripped) and stripped.isascii():
        return TokenClass.NUMBER
    if all(unicodedata.category(ch)[0] in "PS" for ch in stripped):
        return TokenClass.PUNCTUATION
    if stripped.lower().replace("’", "'") in FUNCTION_WORDS:
        return TokenClass.FUNCTION
    if _WORD.fullmatch(stripped):
        return TokenClass.CONTENT
    return TokenClass.OTHER


def _special_ids(tokenizer: Any) -> set[int]:
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(token_id))
    return ids


def classify_vocabulary(tokenizer: Any, d_vocab: int | None = None) -> np.ndarray:
    """[d_vocab] int8 class codes (:class:`TokenClass`) of every id of ``tokenizer``.

    Args:
        tokenizer: a Hugging Face tokenizer.
        d_vocab: rows of the model's unembedding (default ``len(tokenizer)``); ids the
            tokenizer does not have are ``OTHER``.
    """
    size = len(tokenizer)
    d_vocab = size if d_vocab is None else int(d_vocab)
    if d_vocab < 1:
        raise HooklabError(f"d_vocab={d_vocab}: expected a positive vocabulary size.")
    known = min(size, d_vocab)
    texts = tokenizer.batch_decode([[i] for i in range(known)], clean_up_tokenization_spaces=False)
    special = _special_ids(tokenizer)
    codes = np.full(d_vocab, int(TokenClass.OTHER), dtype=np.int8)
    for token_id, text in enumerate(texts):
        codes[token_id] = int(classify_text(text, special=token_id in special))
    return codes
