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
import http.client
import json
import math
import os
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hooklab.behaviour.scorers import Generation
from hooklab.errors import HooklabError
from hooklab.jsonl import jsonl_lines

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

    def accepts(self, score: object) -> bool:
        """Whether ``score`` is one :meth:`parse` can return (a cached one is checked so)."""
        if score is None:
            return True
        if isinstance(score, bool) or not isinstance(score, int | float):
            return False
        allowed = (1.0, 2.0, 3.0, 4.0, 5.0) if self.scale == "1-5" else (0.0, 1.0)
        return float(score) in allowed


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
    raw. The model loads on first use. ``id`` defaults to ``"hf:<folder name>:<digest>"``,
    the digest of the folder's resolved path, ``config.json`` and weight file names and sizes,
    so that two judges in folders of one name do not share cached scores.
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
        self.id = id or f"hf:{self.folder.name}:{_folder_fingerprint(self.folder)}"
        self.cache_id = f"{self.id}|max_new_tokens={max_new_tokens}"
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


def _folder_fingerprint(folder: Path) -> str:
    """Eight hex digits naming a checkpoint folder: its path, config and weight files."""
    digest = hashlib.sha256(str(folder.resolve()).encode())
    digest.update((folder / "config.json").read_bytes())
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:8]


class _NoCrossOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only within the request's origin (scheme, host, port), so an API
    key is never sent elsewhere; any other redirect is a :class:`HooklabError`."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0913
        if _origin(newurl) != _origin(req.full_url):
            raise HooklabError(
                f"HTTPJudge {_origin(req.full_url)}: HTTP {code} redirect to another origin "
                f"({_origin(newurl)}), refused so that no API key is sent there; pass the "
                "final endpoint as url."
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{parts.hostname}:{port}"


class _Deadline:
    """Shuts every socket opened for one request down when its time is up, so that a reply
    dripped a byte at a time cannot hold a request past ``seconds`` in all."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self._timers: list[threading.Timer] = []

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.end

    def watch(self, sock: socket.socket) -> None:
        timer = threading.Timer(max(self.end - time.monotonic(), 0.0), _shut, (sock,))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()

    def connection(self, base: type[http.client.HTTPConnection]) -> Any:
        deadline = self

        class Connection(base):  # type: ignore[valid-type,misc]
            def connect(self) -> None:
                super().connect()
                deadline.watch(self.sock)

        return Connection


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _DeadlineHTTP(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(self.deadline.connection(http.client.HTTPConnection), req)


class _DeadlineHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def https_open(self, req):
        connection = self.deadline.connection(http.client.HTTPSConnection)
        return self.do_open(connection, req, context=ssl.create_default_context())


class HTTPJudge(_CompletionJudge):
    """An OpenAI-compatible chat-completions endpoint as a judge (``urllib``, no SDK).

    Args:
        url: the endpoint, e.g. ``http://127.0.0.1:8000/v1/chat/completions``.
        model: the ``model`` field of the request.
        api_key_env: name of the environment variable holding the API key (sent as
            ``Authorization: Bearer``); ``None`` sends no key.
        timeout: seconds per attempt in all (connecting, sending and reading the whole
            reply), not per read.
        retries: extra attempts after a connection error, a timeout, HTTP 429 or 5xx.
        backoff: seconds before the first retry, doubled for each next one.
        max_tokens: the reply's token limit (temperature is 0).
        id: the judge's name, ``"http:<model>"`` by default. Cached scores are keyed by it,
            the url and ``max_tokens`` together (:attr:`cache_id`).
        max_reply_bytes: a longer reply is refused (never read whole, never cached).

    Redirects are followed only within the url's origin: the API key goes nowhere else.
    The key is blanked out of every error message.
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
        max_reply_bytes: int = 1 << 20,
    ):
        if not url.startswith(("http://", "https://")):
            raise HooklabError(f"HTTPJudge url={url!r}: expected an http:// or https:// URL.")
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise HooklabError(f"HTTPJudge timeout={timeout!r}: expected seconds > 0.")
        self.url, self.model, self.api_key_env = url, model, api_key_env
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.max_tokens, self.max_reply_bytes = max_tokens, max_reply_bytes
        self.id = id or f"http:{model}"
        self.cache_id = f"{self.id}|{url}|max_tokens={max_tokens}"

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

    def _key(self) -> str | None:
        return None if self.api_key_env is None else os.environ.get(self.api_key_env)

    def _redact(self, text: str) -> str:
        """``text`` with the API key (and its URL-quoted form) blanked out."""
        key = self._key()
        if key:
            for form in {key, urllib.parse.quote(key), urllib.parse.quote_plus(key)}:
                text = text.replace(form, "<api key>")
        return text

    def _shown(self, body: bytes) -> str:
        """The start of a reply for an error message, the key blanked out before cutting."""
        return repr(self._redact(body[:4096].decode(errors="replace"))[:200])

    def _attempt(self, request: urllib.request.Request) -> bytes:
        """One request, bounded by :attr:`timeout` in all and :attr:`max_reply_bytes`."""
        deadline = _Deadline(self.timeout)
        opener = urllib.request.build_opener(
            _NoCrossOriginRedirects(), _DeadlineHTTP(deadline), _DeadlineHTTPS(deadline)
        )
        try:
            with opener.open(request, timeout=self.timeout) as response:
                body = self._read_bounded(response)
        except (OSError, http.client.HTTPException) as error:
            if deadline.passed and not isinstance(error, urllib.error.HTTPError):
                raise TimeoutError(f"timed out after {self.timeout} s in all") from None
            raise
        finally:
            deadline.cancel()
        if deadline.passed:  # the socket was shut mid-reply: what came is not all of it
            raise TimeoutError(f"timed out after {self.timeout} s in all")
        return body

    def _read_bounded(self, response: Any) -> bytes:
        limit = self.max_reply_bytes
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise self._too_long(f"{int(length)} bytes announced")
        chunks, size = [], 0
        while chunk := response.read(min(1 << 16, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise self._too_long("more")
        return b"".join(chunks)

    def _too_long(self, what: str) -> HooklabError:
        return HooklabError(
            f"HTTPJudge {self.url}: reply longer than max_reply_bytes={self.max_reply_bytes} "
            f"({what}); check the endpoint, or raise max_reply_bytes."
        )

    def complete(self, prompt: str) -> str:
        data = json.dumps(self.request_body(prompt)).encode()
        request = urllib.request.Request(self.url, data=data, headers=self._headers())
        for attempt in range(self.retries + 1):
            try:
                body = self._attempt(request)
                break
            except urllib.error.HTTPError as error:
                retryable = error.code == 429 or error.code >= 500
                if not retryable or attempt == self.retries:
                    detail = self._shown(error.read(4096))
                    raise HooklabError(
                        f"HTTPJudge {self.url}: HTTP {error.code} after {attempt + 1} "
                        f"attempt(s): {detail}. Check the url, model and API key."
                    ) from None
            except (OSError, http.client.HTTPException) as error:
                if attempt == self.retries:
                    raise HooklabError(
                        f"HTTPJudge {self.url}: no reply after {attempt + 1} attempt(s) "
                        f"({self._redact(str(error))}); check that the server runs, or raise "
                        "timeout/retries."
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
                f"HTTPJudge {self.url}: malformed reply {self._shown(body)}; expected an "
                'OpenAI chat completion {"choices": [{"message": {"content": "..."}}]}.'
            )
        return content


def cache_key(generation: Generation, judge_id: str, rubric: Rubric) -> str:
    """``sha256(prompt, text)|judge id|rubric name@version``."""
    digest = hashlib.sha256(
        json.dumps([generation.prompt_text, generation.text], ensure_ascii=False).encode()
    ).hexdigest()
    return f"{digest}|{judge_id}|{rubric.name}@{rubric.version}"


def _is_record(line: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and isinstance(record.get("key"), str) and "score" in record


class JudgeCache:
    """Judge scores cached in a JSONL file, keyed by :func:`cache_key`.

    Each line is ``{"key", "judge", "rubric", "score", "reply"}`` (``reply`` only for judges
    with a ``complete`` method); a ``None`` score (unparsable reply) is cached too. A judge's
    ``cache_id`` (its id with what else changes its replies: an HTTP judge's url and
    ``max_tokens``), else its ``id``, is the key's judge part. A last line torn by a kill
    mid-write is dropped (and cut from the file); a cached score the rubric could not have
    given is an error. ``hits`` and ``misses`` count look-ups since the cache was opened.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._scores: dict[str, float | None] = {}
        self._lines: dict[str, int] = {}
        self.hits = self.misses = 0
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise HooklabError(
                f"JudgeCache {self.path}: cannot read it ({error}); delete the file to rebuild "
                "the cache."
            ) from None
        lines = list(jsonl_lines(text))
        if lines and not text.endswith("\n"):  # a write cut short: keep what was whole
            if _is_record(lines[-1][1]):
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write("\n")
            else:
                self._repair(text)
                lines = lines[:-1]
        for number, line in lines:
            try:
                record = json.loads(line)
                key, score = record["key"], record["score"]
                if not isinstance(key, str):
                    raise TypeError(key)
            except (ValueError, KeyError, TypeError):
                raise HooklabError(
                    f"JudgeCache {self.path}, line {number}: not a cache record; delete "
                    "the file (or the line) to rebuild the cache."
                ) from None
            self._scores[key], self._lines[key] = score, number

    def _repair(self, text: str) -> None:
        """Cut a torn last line off the file so that the next record starts a line."""
        whole = text[: text.rfind("\n") + 1]
        with self.path.open("r+b") as handle:
            handle.truncate(len(whole.encode("utf-8")))

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, key: str) -> bool:
        return key in self._scores

    def score(self, judge: Judge, generation: Generation, rubric: Rubric) -> float | None:
        """The cached score, or ``judge``'s score of ``generation`` (then cached)."""
        key = cache_key(generation, getattr(judge, "cache_id", judge.id), rubric)
        if key in self._scores:
            cached = self._scores[key]
            if not rubric.accepts(cached):
                line = self._lines.get(key, "?")
                raise HooklabError(
                    f"JudgeCache {self.path}, line {line}: score {cached!r} is "
                    f"not one rubric {rubric.name!r} ({rubric.scale}) gives; delete the line "
                    "(or the file) to score it again."
                )
            self.hits += 1
            return cached
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
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._scores[key] = value
        return value
