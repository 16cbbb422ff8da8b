"""The claim decoders' fast paths give exactly what the plain ones give."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from jobbuf import Ack, Job
from jobbuf._job import Claim, claimed_job
from jobbuf._postgres import _timestamp
from jobbuf._source import completion, decode_payload, encode_payload

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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


def test_claim_timestamps_from_epoch_seconds_are_exact_where_promised() -> None:
    # PostgreSQL's date_part('epoch', t) is the microsecond count divided by 10**6 in a
    # double, as Python's int / float is: the decoder must give back the same microsecond.
    rng = random.Random(7)
    lo, hi = _micros(datetime(1698, 1, 1, tzinfo=UTC)), _micros(datetime(2242, 1, 1, tzinfo=UTC))
    samples = [rng.randrange(lo, hi) for _ in range(200_000)]
    samples += [lo, hi, -1, 0, 1, 999_999, 1_000_001, -999_999, -1_000_001]
    for us in samples:
        assert _timestamp(us / 10**6) == EPOCH + timedelta(microseconds=us), us
    assert _timestamp(math.inf) == datetime.max and _timestamp(-math.inf) == datetime.min  # as asyncpg


def _micros(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


def test_claim_timestamps_past_what_a_datetime_holds_are_clamped() -> None:
    # 9999-12-31 23:59:59.999999 rounds up to year 10000 as epoch seconds: a row with it
    # must still decode (an error here would fail the claim after it committed, forever).
    last = _micros(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
    assert _timestamp(last / 10**6) == datetime.max.replace(tzinfo=UTC)
    assert _timestamp(-1e20) == datetime.min.replace(tzinfo=UTC)
