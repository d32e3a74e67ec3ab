"""The judge against a fake OpenAI-compatible server on loopback: scores, failures counted apart, cache."""

from __future__ import annotations

import json

import pytest

from eval_helpers import GOOD, FakeJudge, answer
from helpers import random_image
from relation_cli.evaluate.judge import PROMPT_SHA256, Judge, judge_samples, parse_answer


@pytest.fixture()
def images(tmp_path):
    for i, name in enumerate(("a", "b", "q", "o", "o2")):
        random_image(tmp_path / f"{name}.png", (32, 32), seed=i)
    return tmp_path


def sample(method: str, output: str) -> dict:
    return {"method": method, "cond1": "a.png", "cond2": "b.png", "source": "q.png", "output": output, "text": "blue"}


@pytest.mark.parametrize(
    "message, status",
    [
        ({"content": '{"consistency": 5, "accuracy": 2, "reason": "ok"}'}, "ok"),
        ({"content": 'Sure!\n```json\n{"consistency": 3, "accuracy": 4, "reason": "x"}\n```'}, "ok"),
        ({"content": None, "refusal": "I can't help with that."}, "refusal"),
        ({"content": "I'm sorry, but I can't assess these images."}, "refusal"),
        ({"content": "The edit looks great, 9 out of 10."}, "unparseable"),
        ({"content": '{"consistency": 6, "accuracy": 2}'}, "unparseable"),  # out of range
        ({"content": '{"consistency": 4.5, "accuracy": 2}'}, "unparseable"),  # not an integer
        ({"content": ""}, "unparseable"),
    ],
)
def test_parse_answer(message, status):
    verdict = parse_answer(message, "stop")
    assert verdict.status == status
    assert (verdict.consistency is None) == (status != "ok")


def test_failures_are_counted_apart_and_never_scored(images, tmp_path):
    script = [
        GOOD,
        answer(None, refusal="I can't help with that."),
        answer("This looks like a nice edit!"),  # malformed: no JSON
        ("sleep", 2.0),  # past the 0.5 s timeout
        ("status", 500),
        ("raw", "<html>not json</html>"),
    ]
    outputs = ["o.png", "o2.png", "o.png", "o2.png", "o.png", "o2.png"]
    methods = ["relation", "relation", "relation", "copy_query", "copy_query", "copy_query"]
    texts = ["t0", "t1", "t2", "t3", "t4", "t5"]  # different texts: six different requests
    samples = [{**sample(m, o), "text": t} for m, o, t in zip(methods, outputs, texts)]
    with FakeJudge(script) as server:
        judge = Judge(server.url, "fake-4o", "secret", tmp_path / "cache", timeout=0.5, retries=0)
        counts = judge_samples(judge, samples, images, workers=1)
        assert server.requests[0]["path"] == "/v1/chat/completions"
        assert server.requests[0]["auth"] == "Bearer secret"
        body = server.requests[0]["body"]
        assert body["model"] == "fake-4o" and len(body["messages"][1]["content"]) == 5  # text + 4 images
    assert [s["judge_status"] for s in samples] == ["ok", "refusal", "unparseable", "error", "error", "error"]
    assert counts == {
        "relation": {"ok": 1, "refusal": 1, "unparseable": 1, "error": 0, "cached": 0},
        "copy_query": {"ok": 0, "refusal": 0, "unparseable": 0, "error": 3, "cached": 0},
    }
    assert (samples[0]["judge_consistency"], samples[0]["judge_accuracy"]) == (4, 3)
    assert all("judge_consistency" not in s for s in samples[1:])  # failures never become numbers
    assert "timed out" in samples[3]["judge_note"] and "HTTP 500" in samples[4]["judge_note"]
    assert "malformed response" in samples[5]["judge_note"]
    # Answers are cached (the model's own, refusals included); failed requests are not.
    cached = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert sorted(c["verdict"]["status"] for c in cached) == ["ok", "refusal", "unparseable"]
    assert all(c["prompt_sha256"] == PROMPT_SHA256 and c["model"] == "fake-4o" and c["date"] for c in cached)


def test_cache_hits_skip_the_server(images, tmp_path):
    with FakeJudge() as server:
        judge = Judge(server.url, "fake-4o", "k", tmp_path / "cache", timeout=5, retries=0)
        first = judge.score(images / "a.png", images / "b.png", images / "q.png", images / "o.png", "blue")
        again = judge.score(images / "a.png", images / "b.png", images / "q.png", images / "o.png", "blue")
        other = judge.score(images / "a.png", images / "b.png", images / "q.png", images / "o2.png", "blue")
        assert len(server.requests) == 2  # the repeat came from the cache, another output did not
    assert (first.status, first.cached, again.cached, other.cached) == ("ok", False, True, False)
    assert (again.consistency, again.accuracy) == (4, 3)


def test_retry_after_a_server_error(images, tmp_path, monkeypatch):
    monkeypatch.setattr("relation_cli.evaluate.judge.time.sleep", lambda s: None)
    with FakeJudge([("status", 503)]) as server:
        judge = Judge(server.url, "fake-4o", "k", tmp_path / "cache", timeout=5, retries=1)
        verdict = judge.score(images / "a.png", images / "b.png", images / "q.png", images / "o.png", "")
        assert verdict.status == "ok" and len(server.requests) == 2
