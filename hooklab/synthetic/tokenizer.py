"""A small byte-level BPE tokenizer with a chat template, built offline and deterministically.

Like the real families' tokenizers it prepends a BOS token when encoding plain text and its
chat template also writes one, so the double-BOS pitfall of docs/families.md is real here.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tokenizer", "saved_tokenizer_folder"]

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
SPECIAL_TOKENS = (BOS, EOS, PAD, START_OF_TURN, END_OF_TURN)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<start_of_turn>{{ message['role'] }}\n{{ message['content'] }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    text = resources.files("hooklab.synthetic").joinpath("corpus.txt").read_text()
    return [line for line in text.splitlines() if line.strip()]


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most ``vocab_size`` tokens on hooklab's built-in corpus.

    Special tokens take ids 0..4 in the order of :data:`SPECIAL_TOKENS` (BOS = 0, EOS = 1,
    PAD = 2). The result is the same on every machine.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, 0)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[START_OF_TURN, END_OF_TURN],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _remove_if_mine(folder: Path, owner: int) -> None:
    if os.getpid() == owner:  # a forked child inherits the hook but not the folder
        shutil.rmtree(folder, ignore_errors=True)


@functools.cache
def _saved(vocab_size: int, owner: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="hooklab-tokenizer-"))  # 0700, a fresh name
    atexit.register(_remove_if_mine, folder, owner)
    build_tokenizer(vocab_size).save_pretrained(folder)
    return folder


def saved_tokenizer_folder(vocab_size: int = 512) -> Path:
    """A folder holding :func:`build_tokenizer`'s tokenizer (``save_pretrained`` layout).

    The folder is this process's own (``tempfile.mkdtemp``: a fresh name, mode 0700), built
    once per process and removed when it exits, so concurrent processes never share or
    overwrite one. It lives as long as the process because TransformerLens re-reads a
    tokenizer from its folder while booting.
    """
    return _saved(int(vocab_size), os.getpid())
