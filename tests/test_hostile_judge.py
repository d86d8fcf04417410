"""The HTTP judge and its cache against hostile servers and damaged cache files.

Every server here listens on 127.0.0.1 (port 0), is started inside its test and stops by
itself: each handler gives up after a few seconds and the server is shut down on exit.
"""

from __future__ import annotations

import json
import threading
import time
import tracemalloc

import pytest

from hooklab.behaviour import Generation, HTTPJudge, JudgeCache, LocalHFJudge, Rubric, cache_key
from hooklab.errors import HooklabError
from tests.judge_server import LocalServer, reply

RUBRIC = Rubric("helpfulness", "1", "Rate 1-5: {prompt} -> {response}")
GEN = Generation(prompt_id="p", category="factual", prompt_text="Capital of Peru?", text="Lima.")
KEY = "sk-secret-0123456789"


def _completion(content: str) -> bytes:
    message = {"role": "assistant", "content": content}
    return json.dumps({"choices": [{"message": message}]}).encode()


# ---------------------------------------------------------------- 7: redirects


def test_cross_origin_redirect_is_refused_and_gets_no_key(monkeypatch):
    monkeypatch.setenv("HOOKLAB_TEST_KEY", KEY)
    with LocalServer(lambda h: reply(h, 200, _completion("1"))) as evil:
        with LocalServer(lambda h: reply(h, 302, b"", Location=evil.url)) as judge_server:
            judge = HTTPJudge(judge_server.url, "m", api_key_env="HOOKLAB_TEST_KEY", backoff=0)
            with pytest.raises(HooklabError, match="redirect to another origin") as caught:
                judge.score(GEN, RUBRIC)
        assert evil.requests == []  # the other host never heard from us
    assert "sk-secret" not in str(caught.value)


def test_same_origin_redirect_is_followed(monkeypatch):
    monkeypatch.setenv("HOOKLAB_TEST_KEY", KEY)

    def handle(h):
        if h.path == "/old":
            reply(h, 307, b"", Location="/v1/chat/completions")
        else:
            reply(h, 200, _completion("4"))

    with LocalServer(handle) as server:
        judge = HTTPJudge(f"{server.origin}/old", "m", api_key_env="HOOKLAB_TEST_KEY")
        with pytest.raises(HooklabError):  # urllib does not re-POST a 307: refused, not GET
            judge.score(GEN, RUBRIC)
        assert all(r["method"] == "POST" for r in server.requests)


# ---------------------------------------------------------------- 8: time and size


def test_timeout_bounds_the_whole_request_not_each_read():
    stop = threading.Event()

    def drip(h):
        body = _completion("3")
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for byte in body:  # a byte every 0.2 s: each read is quick, the whole is not
            if stop.wait(0.2):
                return
            try:
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
            except OSError:
                return

    with LocalServer(drip) as server:
        start = time.monotonic()
        try:
            with pytest.raises(HooklabError, match="no reply after 1 attempt"):
                HTTPJudge(server.url, "m", timeout=1, retries=0).score(GEN, RUBRIC)
        finally:
            stop.set()
        assert time.monotonic() - start < 3


def test_a_huge_reply_is_refused_without_reading_it_whole(tmp_path):
    size = 50 << 20
    chunk = b" " * (1 << 20)

    def huge(h, announce: bool):
        h.send_response(200)
        if announce:
            h.send_header("Content-Length", str(size))
        h.end_headers()
        try:
            for _ in range(size // len(chunk)):
                h.wfile.write(chunk)
        except OSError:
            pass

    for announce in (True, False):
        with LocalServer(lambda h, a=announce: huge(h, a)) as server:
            cache = JudgeCache(tmp_path / f"c{announce}.jsonl")
            tracemalloc.start()
            try:
                with pytest.raises(HooklabError, match="max_reply_bytes"):
                    cache.score(HTTPJudge(server.url, "m", retries=0), GEN, RUBRIC)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 10 << 20
            assert not cache.path.exists() or cache.path.read_text() == ""


# ---------------------------------------------------------------- 9: cache key, torn lines, key


def test_cache_key_holds_the_endpoint_and_max_tokens(tmp_path):
    def judges(server):
        return [
            HTTPJudge(server.url, "m"),
            HTTPJudge(server.url.replace("/v1/", "/v2/"), "m"),
            HTTPJudge(server.url, "m", max_tokens=1),
        ]

    with LocalServer(lambda h: reply(h, 200, _completion("4"))) as server:
        cache = JudgeCache(tmp_path / "c.jsonl")
        for judge in judges(server):
            assert cache.score(judge, GEN, RUBRIC) == 4.0
        assert cache.misses == 3 and len(server.requests) == 3
        assert len({j.cache_id for j in judges(server)}) == 3


def test_local_judges_in_same_named_folders_have_distinct_ids(tiny_pair, tmp_path):
    import shutil

    first, second = tmp_path / "a" / "judge", tmp_path / "b" / "judge"
    shutil.copytree(tiny_pair("llama").it, first)
    shutil.copytree(tiny_pair("qwen3").it, second)
    ids = {LocalHFJudge(first).id, LocalHFJudge(second).id}
    assert len(ids) == 2 and all(i.startswith("hf:judge:") for i in ids)
    assert LocalHFJudge(first).id == LocalHFJudge(first).id  # stable
    assert LocalHFJudge(first, max_new_tokens=2).cache_id != LocalHFJudge(first).cache_id


class _Fixed:
    id = "fixed"

    def score(self, generation, rubric):  # noqa: ARG002 - a judge's signature
        return 4.0


def test_a_torn_last_cache_line_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = JudgeCache(path)
    cache.score(_Fixed(), GEN, RUBRIC)
    other = Generation("q", "factual", "Capital of Chile?", "Santiago.")
    whole = path.read_text()
    path.write_text(whole + '{"key": "abc", "sco')  # killed mid-write
    reopened = JudgeCache(path)
    assert len(reopened) == 1 and reopened.score(_Fixed(), GEN, RUBRIC) == 4.0
    assert path.read_text() == whole  # the torn tail is cut, the next record starts a line
    reopened.score(_Fixed(), other, RUBRIC)
    assert len(JudgeCache(path)) == 2
    path.write_text(whole.rstrip("\n"))  # whole, only its newline lost: kept, newline added
    assert len(JudgeCache(path)) == 1 and path.read_text() == whole


@pytest.mark.parametrize("score", ['"4"', "true", "7", "NaN", "[4]", "2.5"])
def test_a_cached_score_the_rubric_cannot_give_is_refused(tmp_path, score):
    path = tmp_path / "c.jsonl"
    key = cache_key(GEN, "fixed", RUBRIC)
    path.write_text(f'{{"key": "{key}", "score": {score}}}\n')
    with pytest.raises(HooklabError, match=r"line 1: score .* delete the line"):
        JudgeCache(path).score(_Fixed(), GEN, RUBRIC)


def test_a_reply_with_line_separators_keeps_the_cache_readable(tmp_path):
    text = "4\x85 next\u2028line\x0cfeed\x1c"
    with LocalServer(lambda h: reply(h, 200, _completion(text))) as server:
        judge = HTTPJudge(server.url, "m")
        assert JudgeCache(tmp_path / "c.jsonl").score(judge, GEN, RUBRIC) == 4.0
    reopened = JudgeCache(tmp_path / "c.jsonl")
    assert len(reopened) == 1 and reopened.score(judge, GEN, RUBRIC) == 4.0


@pytest.mark.parametrize("status", [401, 200])
def test_the_api_key_never_appears_in_an_error(monkeypatch, status):
    monkeypatch.setenv("HOOKLAB_TEST_KEY", KEY)

    def echo(h):  # echoes the request headers back, as some proxies' error pages do
        reply(h, status, json.dumps(dict(h.headers)).encode())

    with LocalServer(echo) as server:
        judge = HTTPJudge(server.url, "m", api_key_env="HOOKLAB_TEST_KEY", retries=0)
        with pytest.raises(HooklabError) as caught:
            judge.score(GEN, RUBRIC)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert "sk-secret" not in str(caught.value)  # not even the part before a cut
