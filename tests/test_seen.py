"""The Bloom filters that tell the writer which keys may have been stored before (store/seen.py): the compiled
and the Python insertion agree bit for bit, a key added is always found again, and new keys are seldom taken for
old ones, across the growth from one filter to the next."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from otel_feedback.store import seen


def _hashes(rng: random.Random, n: int) -> pa.Array:
    return pa.array([rng.getrandbits(64) for _ in range(n)], pa.uint64())


@pytest.fixture(params=["compiled", "python"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "compiled":
        if seen._seen is None:
            pytest.skip("the C extension is not built here")
    else:
        monkeypatch.setattr(seen, "_seen", None)
    return request.param


def test_added_keys_are_found_and_new_ones_seldom(impl: str) -> None:
    rng = random.Random(7)
    s = seen.Seen(least=1 << 12)  # small filters, so that this test grows three of them
    first = _hashes(rng, 20_000)
    assert len(s.add(first)) <= 2  # new keys: ~1e-5 false positives
    assert len(s._filters) == 3
    # every key added before is found, in whichever filter it went to, also from a sliced array
    assert s.add(first.slice(3, 5_000)) == list(range(5_000))
    assert s.add(pa.chunked_array([first.slice(19_990), first.slice(0, 2)])) == list(range(12))
    # a key repeated within one call is found at its second place
    again = _hashes(rng, 3)
    assert s.add(pa.array([again[0].as_py(), again[1].as_py(), again[0].as_py()], pa.uint64())) == [2]
    fresh = _hashes(rng, 100_000)
    assert len(s.add(fresh)) < 50


def test_contains_finds_what_was_added_and_adds_nothing(impl: str) -> None:
    rng = random.Random(11)
    s = seen.Seen(least=1 << 12)
    added = _hashes(rng, 10_000)  # two filters
    s.add(added)
    before = [bytes(f) for f in s._filters]
    assert all(s.contains(added.slice(i, 1)) for i in range(0, 10_000, 97))
    assert s.contains(pa.chunked_array([_hashes(rng, 5), added.slice(9_999)]))
    fresh = [_hashes(rng, 1) for _ in range(2_000)]
    assert sum(s.contains(h) for h in fresh) <= 2  # ~1e-5 each
    assert not s.contains(pa.array([], pa.uint64()))
    assert [bytes(f) for f in s._filters] == before  # nothing added
    with pytest.raises(ValueError, match="uint64"):
        s.contains(pa.array([1], pa.int64()))


def test_the_compiled_and_python_filters_agree() -> None:
    if seen._seen is None:
        pytest.skip("the C extension is not built here")
    rng = random.Random(3)
    batches = [_hashes(rng, n) for n in (1, 500, 3_000)]
    batches.append(batches[1].slice(100, 50))
    compiled, python = seen.Seen(), seen.Seen()
    answers = [compiled.add(b) for b in batches]
    c = seen._seen
    try:
        seen._seen = None
        assert [python.add(b) for b in batches] == answers
    finally:
        seen._seen = c
    assert answers[-1] == list(range(50))
    assert [bytes(f) for f in compiled._filters] == [bytes(f) for f in python._filters]
    probes = [_hashes(rng, 1) for _ in range(300)] + [batches[2].slice(i, 1) for i in range(0, 3_000, 10)]
    found = [compiled.contains(p) for p in probes]
    try:
        seen._seen = None
        assert [python.contains(p) for p in probes] == found
    finally:
        seen._seen = c
    assert sum(found) >= 300


def test_bad_input_is_refused() -> None:
    s = seen.Seen()
    with pytest.raises(ValueError, match="uint64"):
        s.add(pa.array([1, 2], pa.int64()))
    with pytest.raises(ValueError, match="uint64"):
        s.add(pa.array([1, None], pa.uint64()))


@pytest.mark.parametrize(
    ("decoder", "filter_", "expected"),
    [
        (True, True, "compiled"),
        (True, False, "compiled; the span filter in Python"),
        (False, False, "Python (the compiled decoder was not built"),
    ],
)
def test_serve_says_when_the_filter_runs_in_python(
    monkeypatch: pytest.MonkeyPatch, decoder: bool, filter_: bool, expected: str
) -> None:
    from otel_feedback import decode
    from otel_feedback.cli import _decoder_note
    from otel_feedback.config import Settings

    monkeypatch.setattr(decode, "COMPILED_DECODER", decoder)
    monkeypatch.setattr(seen, "COMPILED", filter_)
    note = _decoder_note(Settings())
    assert note.startswith(expected)
    assert ("span filter in Python" in note) is not filter_
