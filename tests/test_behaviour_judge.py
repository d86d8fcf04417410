"""Judges: an OpenAI-compatible server started here, a tiny local checkpoint, the cache."""

from __future__ import annotations

import json

import pytest

from hooklab.behaviour import (
    Generation,
    HTTPJudge,
    Judge,
    JudgeCache,
    LocalHFJudge,
    Rubric,
    cache_key,
)
from hooklab.errors import HooklabError
from tests.judge_server import canned_server

RUBRIC = Rubric(
    name="helpfulness",
    version="1",
    template="Rate 1-5 how helpful {response} is for {prompt}. Reply with a number {like: 3}.",
)
YES_NO = Rubric("refuses", "1", "Does this refuse? {prompt} -> {response}. yes or no", "yes/no")
GEN = Generation(prompt_id="p", category="factual", prompt_text="Capital of Peru?", text="Lima.")


def completion(content) -> tuple[int, bytes]:
    message = {"role": "assistant", "content": content}
    return 200, json.dumps({"choices": [{"message": message}]}).encode()


def test_rubric_parse_rules():
    assert [RUBRIC.parse(r) for r in ("4", "Score: 5/5", "I'd say 2.", "0", "9", "4.5", "")] == [
        4.0, 5.0, 2.0, None, None, None, None
    ]  # fmt: skip
    assert [YES_NO.parse(r) for r in ("Yes.", "**no**, it answers", "maybe", "")] == [
        1.0, 0.0, None, None
    ]  # fmt: skip
    with pytest.raises(HooklabError, match="placeholders"):
        Rubric("r", "1", "no placeholders here")
    with pytest.raises(HooklabError, match="scale"):
        Rubric("r", "1", "{prompt}{response}", scale="1-10")
    assert RUBRIC.render(GEN) == (
        "Rate 1-5 how helpful Lima. is for Capital of Peru?. Reply with a number {like: 3}."
    )


def test_http_judge_request_score_and_cache_hit(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOKLAB_TEST_KEY", "sk-test")
    with canned_server([completion("4")]) as server:
        judge = HTTPJudge(server.url, "judge-model", api_key_env="HOOKLAB_TEST_KEY", backoff=0)
        assert isinstance(judge, Judge) and judge.id == "http:judge-model"
        cache = JudgeCache(tmp_path / "cache.jsonl")
        assert cache.score(judge, GEN, RUBRIC) == 4.0
        assert cache.score(judge, GEN, RUBRIC) == 4.0  # no second request: the server has none
        assert (cache.hits, cache.misses, len(server.requests)) == (1, 1, 1)
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["body"] == {
        "model": "judge-model",
        "messages": [{"role": "user", "content": RUBRIC.render(GEN)}],
        "temperature": 0,
        "max_tokens": 16,
    }
    # a fresh cache object reads the file: still a hit, no server needed
    reopened = JudgeCache(tmp_path / "cache.jsonl")
    assert reopened.score(judge, GEN, RUBRIC) == 4.0 and reopened.hits == 1
    record = json.loads((tmp_path / "cache.jsonl").read_text())
    assert record["key"] == cache_key(GEN, judge.cache_id, RUBRIC) and record["reply"] == "4"


def test_cache_key_separates_text_judge_and_rubric_version():
    keys = {
        cache_key(GEN, "a", RUBRIC),
        cache_key(GEN, "b", RUBRIC),
        cache_key(Generation("p", "factual", "Capital of Peru?", "Lima!"), "a", RUBRIC),
        cache_key(Generation("p", "factual", "Capital of Chile?", "Lima."), "a", RUBRIC),
        cache_key(GEN, "a", Rubric("helpfulness", "2", RUBRIC.template)),
    }
    assert len(keys) == 5
    # the prompt id and arm are not part of the key: the same text is the same judgement
    other = Generation("q", "factual", "Capital of Peru?", "Lima.", arm="pt")
    assert cache_key(other, "a", RUBRIC) == cache_key(GEN, "a", RUBRIC)


def test_http_judge_unparsable_reply_is_none_and_cached(tmp_path):
    with canned_server([completion("It is quite helpful.")]) as server:
        cache = JudgeCache(tmp_path / "c.jsonl")
        judge = HTTPJudge(server.url, "m")
        assert cache.score(judge, GEN, RUBRIC) is None
        assert cache.score(judge, GEN, RUBRIC) is None and len(server.requests) == 1


@pytest.mark.parametrize(
    "reply",
    [(200, b"not json"), (200, b'{"choices": []}'), completion(None), (200, b'{"error": "x"}')],
)
def test_http_judge_malformed_reply_raises(reply):
    with canned_server([reply]) as server:
        with pytest.raises(HooklabError, match="malformed reply"):
            HTTPJudge(server.url, "m").score(GEN, RUBRIC)


def test_http_judge_retries_server_errors_then_gives_up():
    with canned_server([(503, b"busy"), completion("yes")]) as server:
        assert HTTPJudge(server.url, "m", retries=1, backoff=0).score(GEN, YES_NO) == 1.0
        assert len(server.requests) == 2
    with canned_server([(503, b"busy"), (503, b"still busy")]) as server:
        with pytest.raises(HooklabError, match="HTTP 503 after 2 attempt"):
            HTTPJudge(server.url, "m", retries=1, backoff=0).score(GEN, YES_NO)
    with canned_server([(401, b"bad key"), completion("yes")]) as server:  # not retried
        with pytest.raises(HooklabError, match="HTTP 401 after 1 attempt"):
            HTTPJudge(server.url, "m", retries=3, backoff=0).score(GEN, YES_NO)
        assert len(server.requests) == 1


def test_http_judge_connection_failure_and_missing_key(monkeypatch):
    with canned_server([]) as server:
        url = server.url
    with pytest.raises(HooklabError, match="no reply after 2 attempt"):
        HTTPJudge(url, "m", retries=1, backoff=0, timeout=2).score(GEN, YES_NO)
    monkeypatch.delenv("HOOKLAB_MISSING_KEY", raising=False)
    with pytest.raises(HooklabError, match="HOOKLAB_MISSING_KEY"):
        HTTPJudge(url, "m", api_key_env="HOOKLAB_MISSING_KEY").score(GEN, YES_NO)
    with pytest.raises(HooklabError, match="url="):
        HTTPJudge("127.0.0.1:80", "m")


def test_local_hf_judge_runs_greedy_and_parses(tiny_pair, tmp_path):
    folder = tiny_pair("llama").it
    judge = LocalHFJudge(folder, max_new_tokens=4)
    assert isinstance(judge, Judge) and judge.id.startswith(f"hf:{folder.name}:")
    reply = judge.complete(RUBRIC.render(GEN))
    assert isinstance(reply, str)
    assert judge.complete(RUBRIC.render(GEN)) == reply  # greedy: deterministic
    # a random model's reply rarely parses; whatever it is, the score is the rubric's parse
    assert judge.score(GEN, RUBRIC) == RUBRIC.parse(reply)
    cache = JudgeCache(tmp_path / "c.jsonl")
    first = cache.score(judge, GEN, RUBRIC)
    assert first == RUBRIC.parse(reply) and cache.score(judge, GEN, RUBRIC) == first
    assert cache.hits == 1
    with pytest.raises(HooklabError, match="config.json"):
        LocalHFJudge(tmp_path)
