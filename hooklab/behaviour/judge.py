"""Model judges for what rules cannot score, with an on-disk score cache.

A :class:`Rubric` renders a judge prompt from a generation and parses the judge's reply into
a score. A judge (:class:`LocalHFJudge`: a local Hugging Face causal LM; :class:`HTTPJudge`:
an OpenAI-compatible chat-completions endpoint) returns the rubric's score, or ``None`` when
its reply does not parse under the rubric's rule (an unparsable reply is a result, not an
error; a transport failure or a malformed HTTP reply is a :class:`HooklabError`).
:class:`JudgeCache` stores scores in a JSONL file so that re-scoring never asks twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hooklab.behaviour.scorers import Generation
from hooklab.errors import HooklabError

__all__ = ["HTTPJudge", "Judge", "JudgeCache", "LocalHFJudge", "Rubric", "cache_key"]

SCALES = ("1-5", "yes/no")


@dataclass(frozen=True)
class Rubric:
    """What a judge is asked, and how its reply becomes a score.

    Attributes:
        name: the rubric's name (part of the cache key).
        version: bump it whenever ``template`` or ``scale`` changes (part of the cache key).
        template: the judge prompt, with ``{prompt}`` and ``{response}`` placeholders (only
            those two are substituted; other braces are left as they are).
        scale: ``"1-5"``: the first integer in the reply is the score if it is 1..5, else
            ``None``; ``"yes/no"``: the reply's first word, case-insensitive, ``yes`` -> 1.0,
            ``no`` -> 0.0, anything else ``None``.
    """

    name: str
    version: str
    template: str
    scale: str = "1-5"

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise HooklabError(f"Rubric scale={self.scale!r}: expected one of {SCALES}.")
        missing = [p for p in ("{prompt}", "{response}") if p not in self.template]
        if missing:
            raise HooklabError(
                f"Rubric {self.name!r}: template lacks the placeholders {missing}; write them "
                "where the user's prompt and the model's response go."
            )

    def render(self, generation: Generation) -> str:
        """The judge prompt for ``generation``."""
        return self.template.replace("{prompt}", generation.prompt_text).replace(
            "{response}", generation.text
        )

    def parse(self, reply: str) -> float | None:
        """The score in ``reply`` under :attr:`scale`'s rule, or ``None``."""
        if self.scale == "1-5":
            number = re.search(r"(?<![\w.])\d+(?![\w]|\.\d)", reply)
            value = int(number.group()) if number else None
            return float(value) if value is not None and 1 <= value <= 5 else None
        word = re.match(r"\W*([A-Za-z]+)", reply)
        return {"yes": 1.0, "no": 0.0}.get(word.group(1).lower()) if word else None


@runtime_checkable
class Judge(Protocol):
    """A judge: a stable ``id`` (part of the cache key) and a rubric score per generation."""

    id: str

    def score(self, generation: Generation, rubric: Rubric) -> float | None:
        """The rubric's score of ``generation``, ``None`` if the reply does not parse."""
        ...


class _CompletionJudge(ABC):
    id: str

    @abstractmethod
    def complete(self, prompt: str) -> str:
        """The judge model's reply to ``prompt`` (one user turn)."""

    def score(self, generation: Generation, rubric: Rubric) -> float | None:
        return rubric.parse(self.complete(rubric.render(generation)))


class LocalHFJudge(_CompletionJudge):
    """A local Hugging Face causal LM folder as a judge: greedy, ``max_new_tokens`` tokens.

    The prompt goes through the tokenizer's chat template when it has one (one BOS), else
    raw. The model loads on first use. ``id`` defaults to ``"hf:<folder name>"``.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        max_new_tokens: int = 8,
        device: str = "cpu",
        id: str | None = None,
    ):
        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise HooklabError(
                f"LocalHFJudge folder={str(folder)!r}: no config.json there; pass a local "
                "Hugging Face checkpoint folder with its tokenizer."
            )
        self.max_new_tokens, self.device = max_new_tokens, device
        self.id = id or f"hf:{self.folder.name}"
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        import transformers

        self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.folder)
        self._model = transformers.AutoModelForCausalLM.from_pretrained(self.folder)
        self._model.to(self.device).eval()

    def complete(self, prompt: str) -> str:
        import torch

        from hooklab.prompts import chat_prompt_ids, raw_prompt_ids

        if self._model is None:
            self._load()
        tokenizer = self._tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        ids = (chat_prompt_ids if has_template else raw_prompt_ids)(tokenizer, prompt)
        inputs = torch.tensor([ids], device=self.device)
        pad = tokenizer.pad_token_id
        with torch.no_grad():
            out = self._model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=pad if pad is not None else tokenizer.eos_token_id,
            )
        return tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


class HTTPJudge(_CompletionJudge):
    """An OpenAI-compatible chat-completions endpoint as a judge (``urllib``, no SDK).

    Args:
        url: the endpoint, e.g. ``http://127.0.0.1:8000/v1/chat/completions``.
        model: the ``model`` field of the request.
        api_key_env: name of the environment variable holding the API key (sent as
            ``Authorization: Bearer``); ``None`` sends no key.
        timeout: seconds per request.
        retries: extra attempts after a connection error, a timeout, HTTP 429 or 5xx.
        backoff: seconds before the first retry, doubled for each next one.
        max_tokens: the reply's token limit (temperature is 0).
        id: the cache id, ``"http:<model>"`` by default.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        backoff: float = 1.0,
        max_tokens: int = 16,
        id: str | None = None,
    ):
        if not url.startswith(("http://", "https://")):
            raise HooklabError(f"HTTPJudge url={url!r}: expected an http:// or https:// URL.")
        self.url, self.model, self.api_key_env = url, model, api_key_env
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.max_tokens = max_tokens
        self.id = id or f"http:{model}"

    def request_body(self, prompt: str) -> dict[str, Any]:
        """The JSON body sent for ``prompt``."""
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise HooklabError(
                    f"HTTPJudge api_key_env={self.api_key_env!r}: that environment variable "
                    "is not set; export the API key there or pass api_key_env=None."
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, prompt: str) -> str:
        data = json.dumps(self.request_body(prompt)).encode()
        request = urllib.request.Request(self.url, data=data, headers=self._headers())
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read()
                break
            except urllib.error.HTTPError as error:
                retryable = error.code == 429 or error.code >= 500
                if not retryable or attempt == self.retries:
                    detail = error.read()[:200].decode(errors="replace")
                    raise HooklabError(
                        f"HTTPJudge {self.url}: HTTP {error.code} after {attempt + 1} "
                        f"attempt(s): {detail!r}. Check the url, model and API key."
                    ) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if attempt == self.retries:
                    raise HooklabError(
                        f"HTTPJudge {self.url}: no reply after {attempt + 1} attempt(s) "
                        f"({error}); check that the server runs, or raise timeout/retries."
                    ) from None
            time.sleep(self.backoff * 2**attempt)
        return self._content(body)

    def _content(self, body: bytes) -> str:
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise HooklabError(
                f"HTTPJudge {self.url}: malformed reply {body[:200]!r}; expected an "
                'OpenAI chat completion {"choices": [{"message": {"content": "..."}}]}.'
            )
        return content


def cache_key(generation: Generation, judge_id: str, rubric: Rubric) -> str:
    """``sha256(prompt, text)|judge id|rubric name@version``."""
    digest = hashlib.sha256(
        json.dumps([generation.prompt_text, generation.text], ensure_ascii=False).encode()
    ).hexdigest()
    return f"{digest}|{judge_id}|{rubric.name}@{rubric.version}"


class JudgeCache:
    """Judge scores cached in a JSONL file, keyed by :func:`cache_key`.

    Each line is ``{"key", "judge", "rubric", "score", "reply"}`` (``reply`` only for judges
    with a ``complete`` method); a ``None`` score (unparsable reply) is cached too. ``hits``
    and ``misses`` count look-ups since the cache was opened.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._scores: dict[str, float | None] = {}
        self.hits = self.misses = 0
        if self.path.is_file():
            for number, line in enumerate(self.path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    self._scores[record["key"]] = record["score"]
                except (ValueError, KeyError, TypeError):
                    raise HooklabError(
                        f"JudgeCache {self.path}, line {number}: not a cache record; delete "
                        "the file (or the line) to rebuild the cache."
                    ) from None

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, key: str) -> bool:
        return key in self._scores

    def score(self, judge: Judge, generation: Generation, rubric: Rubric) -> float | None:
        """The cached score, or ``judge``'s score of ``generation`` (then cached)."""
        key = cache_key(generation, judge.id, rubric)
        if key in self._scores:
            self.hits += 1
            return self._scores[key]
        self.misses += 1
        if isinstance(judge, _CompletionJudge):
            reply: str | None = judge.complete(rubric.render(generation))
            value = rubric.parse(reply or "")
        else:
            reply, value = None, judge.score(generation, rubric)
        record = {
            "key": key,
            "judge": judge.id,
            "rubric": f"{rubric.name}@{rubric.version}",
            "score": value,
            "reply": reply,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._scores[key] = value
        return value
