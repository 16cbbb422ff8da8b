"""The claim decoders' fast paths give exactly what the plain ones give."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from jobbuf import Ack, Job
from jobbuf._job import Claim, claimed_job
from jobbuf._source import completion, decode_payload, encode_payload

TEXTS = [
    '{"n":1}', "[1,2.5,null,true]", '"x"', "0", "-1e3", "null", "NaN", "{}", '{"a":{"b":[{}]}}',
    '{"ü":"\\u00fc"}',
    ' {"n":1}', '{"n":1} ', "\n[1]\n",  # whitespace: the json.loads fallback
    '{"n":', "", "\ufeff{}", "{} x", "{'a':1}", "[" * 100_000,  # errors, same as json.loads'
]  # fmt: skip


def _outcome(decode: object, text: str) -> tuple[str, object]:
    try:
        return "ok", decode(text)  # type: ignore[operator]
    except (ValueError, RecursionError) as exc:
        return "error", (type(exc), str(exc))


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_decode_payload_is_json_loads(text: str) -> None:
    assert repr(_outcome(decode_payload, text)) == repr(_outcome(json.loads, text))


def test_decode_payload_round_trips_encode_payload() -> None:
    payload = {"list": [1, 2.5, None, True], "text": 'ü\n"', "nested": {"a": []}}
    assert decode_payload(encode_payload(payload)) == payload


def test_claimed_job_equals_job() -> None:
    now = datetime.now(UTC)
    claim = Claim("owner", 7)
    fast = claimed_job(1, "q", {"a": 1}, 5, 2, 9, now, now, claim)
    slow = Job(id=1, queue="q", payload={"a": 1}, priority=5, attempts=2, max_attempts=9, run_at=now, created_at=now,
               claim=claim)  # fmt: skip
    assert fast == slow and repr(fast) == repr(slow) and hash(fast.id) == hash(slow.id)
    assert fast.claim is claim
    with pytest.raises(AttributeError):
        fast.id = 2  # type: ignore[misc]


def test_completion_equals_ack() -> None:
    job = Job(id=1, queue="q", payload=None)
    fast = completion(job)
    assert type(fast) is Ack and fast == Ack(job) and repr(fast) == repr(Ack(job)) and fast.job is job
    with pytest.raises(AttributeError):
        fast.error = "x"  # type: ignore[misc]
