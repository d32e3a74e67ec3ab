"""A vision-language judge behind any OpenAI-compatible chat endpoint, scoring edits 1-5 as the paper does.

The paper asks GPT-4o for two scores: *edit consistency* (is B' edited the way A was edited into A'?)
and *edit accuracy* (is the edit done well and everything else in B kept?). Each answer is cached on
disk, keyed by model, prompt hash and the hashes of the four images sent; refusals, errors and
unparseable answers are counted apart and never become a number.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from ..fs import write_text_atomic

SYSTEM_PROMPT = """You are an expert judge of exemplar-based image editing.
You are shown four images in this order:
1. A: an example image before an edit.
2. A': the same example after the edit.
3. B: a new query image.
4. B': a model's attempt to apply to B the edit that turns A into A'.
An instruction describing the edit may also be given.
Score B' on two criteria, each an integer from 1 (worst) to 5 (best):
- consistency: is the change from B to B' the same kind of transformation as the change from A to A'
  (same style, effect, object change or motion), matching the instruction if one is given?
- accuracy: is the edit carried out correctly and cleanly on B, keeping B's content, identity and
  layout wherever the edit should not change them, without artifacts?
Answer with one JSON object and nothing else:
{"consistency": <1-5>, "accuracy": <1-5>, "reason": "<one short sentence>"}"""

USER_PROMPT = "Instruction: {text}\nImages: A, A', B, B' (in this order)."
PROMPT_SHA256 = hashlib.sha256((SYSTEM_PROMPT + "\n---\n" + USER_PROMPT).encode()).hexdigest()
STATUSES = ("ok", "refusal", "unparseable", "error")
MAX_SIDE = 1024  # images are sent as PNG with the long side at most this (the judge sees no more anyway)
_REFUSAL = re.compile(
    r"\b(I('| a)m sorry|I can(no|')t|I am (not able|unable)|unable to (help|assist|comply))", re.IGNORECASE
)


@dataclass(frozen=True)
class Verdict:
    """One judgement. ``consistency``/``accuracy`` are set only when ``status == 'ok'``."""

    status: str
    consistency: int | None = None
    accuracy: int | None = None
    note: str = ""  # the judge's reason, or what went wrong
    cached: bool = False


def png_data_url(path: Path) -> tuple[str, str]:
    """The image as sent (upright RGB PNG, long side <= MAX_SIDE) and the sha256 of those bytes."""
    from ..images import open_image

    image = open_image(path, "judge image", 10**9, min_side=1)
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode(), hashlib.sha256(data).hexdigest()


def parse_answer(message: dict, finish_reason: str | None) -> Verdict:
    """A chat message -> verdict. Only a JSON object with two integers in 1..5 is a score."""
    if message.get("refusal") or finish_reason == "content_filter":
        return Verdict("refusal", note=str(message.get("refusal") or "content filter")[:300])
    content = message.get("content")
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    content = content if isinstance(content, str) else ""
    match = re.search(r"\{.*\}", content, re.DOTALL)
    try:
        answer = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        answer = None
    if isinstance(answer, dict):
        scores = [answer.get("consistency"), answer.get("accuracy")]
        if all(type(v) is int and 1 <= v <= 5 for v in scores):
            return Verdict("ok", scores[0], scores[1], str(answer.get("reason", ""))[:300])
    if _REFUSAL.search(content):
        return Verdict("refusal", note=content[:300])
    return Verdict("unparseable", note=content[:300] or "(empty answer)")


class Judge:
    """Sends A, A', B, B' and the instruction; ``score`` never raises for a network or model problem."""

    def __init__(
        self, base_url: str, model: str, api_key: str, cache_dir: Path, timeout: float = 60.0, retries: int = 2
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.cache_dir = model, api_key, Path(cache_dir)
        self.timeout, self.retries = timeout, retries

    def score(self, a: Path, a_edited: Path, b: Path, output: Path, text: str) -> Verdict:
        images = [png_data_url(p) for p in (a, a_edited, b, output)]
        key = hashlib.sha256(json.dumps([self.model, PROMPT_SHA256, text, [h for _, h in images]]).encode()).hexdigest()
        cache = self.cache_dir / f"{key}.json"
        if cache.is_file():
            saved = json.loads(cache.read_text(encoding="utf-8"))
            return Verdict(**{**saved["verdict"], "cached": True})
        verdict = self._ask([url for url, _ in images], text)
        if verdict.status != "error":  # the model's own answer is kept; a failed request is retried next run
            record = {"model": self.model, "prompt_sha256": PROMPT_SHA256, "date": _today(), "verdict": asdict(verdict)}
            write_text_atomic(cache, json.dumps(record, indent=1) + "\n")
        return verdict

    def _ask(self, urls: list[str], text: str) -> Verdict:
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": USER_PROMPT.format(text=text or "(none)")}]
                    + [{"type": "image_url", "image_url": {"url": u}} for u in urls],
                },
            ],
        }
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
            method="POST",
        )
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0**attempt, 30.0))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read().decode("utf-8"))
                choice = reply["choices"][0]
                return parse_answer(choice.get("message") or {}, choice.get("finish_reason"))
            except urllib.error.HTTPError as e:
                problem = f"HTTP {e.code} {e.reason}"
                if e.code != 429 and e.code < 500:
                    break  # a bad key or request does not get better by asking again
            except TimeoutError:  # socket.timeout is an alias
                problem = f"timed out after {self.timeout:g} s"
            except urllib.error.URLError as e:
                timed_out = isinstance(e.reason, TimeoutError)
                problem = f"timed out after {self.timeout:g} s" if timed_out else f"network error: {e.reason}"
            except (ConnectionError, http.client.HTTPException) as e:
                problem = f"network error: {type(e).__name__}: {e}"
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                problem = "malformed response body (not an OpenAI chat completion)"
                break
        return Verdict("error", note=problem)


def _today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def judge_samples(
    judge: Judge, samples: list[dict], root: Path, workers: int = 1, advance=None
) -> dict[str, dict[str, int]]:
    """Score ``samples`` in place (``judge_*`` keys); returns counts of each status per method.

    A sample names its exemplar pair and query (``cond1``, ``cond2``, ``source``) and its ``output``,
    relative to ``root``.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(sample: dict) -> Verdict:
        paths = [root / sample[k] for k in ("cond1", "cond2", "source")]
        return judge.score(*paths, root / sample["output"], sample["text"])

    counts: dict[str, dict[str, int]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for sample, verdict in zip(samples, pool.map(one, samples)):
            sample["judge_status"] = verdict.status
            sample["judge_note"] = verdict.note
            if verdict.status == "ok":
                sample["judge_consistency"], sample["judge_accuracy"] = verdict.consistency, verdict.accuracy
            tally = counts.setdefault(sample["method"], {s: 0 for s in (*STATUSES, "cached")})
            tally[verdict.status] += 1
            tally["cached"] += verdict.cached
            if advance is not None:
                advance()
    return counts


def describe(judge: Judge) -> dict:
    """What goes into metrics.json about the judge."""
    return {
        "model": judge.model,
        "endpoint": judge.url,
        "date": _today(),
        "prompt_sha256": PROMPT_SHA256,
        "prompt": {"system": SYSTEM_PROMPT, "user": USER_PROMPT},
        "scores": "consistency and accuracy, integers 1-5; means over 'ok' answers only",
    }
