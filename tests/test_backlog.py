"""Tests of the Python face of the bounded per-topic backlog: ``hyperbroker.Backlog``."""

from __future__ import annotations

import threading

import pytest

from hyperbroker import Backlog


def items(n: int, prefix: str = "") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


def test_keeps_newest_and_counts_drops() -> None:
    bl = Backlog(100)
    pushed = items(1000)
    results = [bl.push("t", it) for it in pushed]
    assert results == [0] * 100 + [1] * 900
    assert bl.len("t") == 100
    assert bl.dropped("t") == 900
    assert bl.dropped_total == 900
    assert bl.total_len == 100 and len(bl) == 100
    assert bl.total_bytes == sum(len(it) for it in pushed[900:])
    assert bl.drain("t") == pushed[900:]
    assert bl.len("t") == 0 and len(bl) == 0 and bl.total_bytes == 0
    # drop counts survive the drain
    assert bl.dropped("t") == 900
    assert bl.dropped_total == 900


def test_capacity_one() -> None:
    bl = Backlog(1)
    assert bl.push("t", b"a") == 0
    assert bl.push("t", b"b") == 1
    assert bl.push("t", b"c") == 1
    assert bl.drain("t") == [b"c"]
    assert bl.dropped("t") == 2


def test_partial_drains_keep_order() -> None:
    bl = Backlog(10)
    for it in items(6):
        bl.push("t", it)
    assert bl.drain("t", 2) == [b"0", b"1"]
    assert bl.drain("t", 0) == []
    assert bl.drain("t", max=1) == [b"2"]
    bl.push("t", b"6")
    bl.push("t", b"7")
    assert bl.len("t") == 5
    assert bl.drain("t", 100) == [b"3", b"4", b"5", b"6", b"7"]
    assert bl.drain("t") == []
    assert bl.drain("missing", 3) == []
    assert bl.dropped("t") == 0


def test_wrap_around_with_partial_drains() -> None:
    bl = Backlog(5)
    n = 0
    last = -1
    for _ in range(200):
        for _ in range(7):
            bl.push("t", n.to_bytes(4, "little"))
            n += 1
        got = [int.from_bytes(b, "little") for b in bl.drain("t", 2)]
        assert len(got) == 2
        assert got[0] > last and got[1] == got[0] + 1
        # the oldest still kept: the newest 5 of everything pushed so far
        assert got[0] == n - 5
        last = got[1]
        assert bl.len("t") == 3
    assert bl.dropped("t") == 200 * 7 - 200 * 2 - 3


def test_per_topic_independence() -> None:
    bl = Backlog(3)
    for it in items(5, "a"):
        bl.push("a", it)
    for it in items(2, "b"):
        bl.push("b", it)
    assert bl.len("a") == 3 and bl.dropped("a") == 2
    assert bl.len("b") == 2 and bl.dropped("b") == 0
    assert sorted(bl.topics()) == ["a", "b"]
    assert bl.total_len == 5 and len(bl) == 5
    assert bl.drain("b") == [b"b0", b"b1"]
    assert bl.len("a") == 3
    assert bl.topics() == ["a"]
    assert bl.drain("a", 1) == [b"a2"]
    assert bl.push("b", b"b2") == 0
    assert bl.drain("a") == [b"a3", b"a4"]
    assert bl.drain("b") == [b"b2"]
    assert bl.topics() == []
    assert bl.dropped("a") == 2 and bl.dropped("b") == 0 and bl.dropped("never") == 0
    assert bl.len("never") == 0
    assert bl.dropped_total == 2


def test_unicode_topics() -> None:
    bl = Backlog(2)
    bl.push("ニュース", b"1")
    bl.push("🚀", b"2")
    assert sorted(bl.topics()) == sorted(["ニュース", "🚀"])
    assert bl.drain("ニュース") == [b"1"]
    assert bl.drain("🚀") == [b"2"]


def test_empty_items() -> None:
    bl = Backlog(3, max_bytes=1)
    for _ in range(5):
        bl.push("t", b"")
    assert bl.len("t") == 3 and bl.dropped("t") == 2
    assert bl.total_bytes == 0
    assert bl.drain("t") == [b""] * 3


def test_byte_cap_drops_globally_oldest() -> None:
    bl = Backlog(100, max_bytes=10)
    assert bl.push("a", b"aaaa") == 0  # 4
    assert bl.push("b", b"bbbb") == 0  # 8
    assert bl.push("a", b"cccc") == 1  # 12 -> drops "aaaa" (oldest overall)
    assert bl.total_bytes == 8
    assert bl.dropped("a") == 1 and bl.dropped("b") == 0
    assert bl.push("c", b"dddddd") == 1  # 14 -> drops "bbbb", now the oldest -> 10
    assert bl.dropped("b") == 1
    assert bl.total_bytes == 10
    assert bl.total_len == 2
    assert bl.dropped_total == 2
    assert bl.len("b") == 0
    assert sorted(bl.topics()) == ["a", "c"]
    assert bl.drain("a") == [b"cccc"]
    assert bl.drain("b") == []
    assert bl.drain("c") == [b"dddddd"]


def test_byte_cap_drops_several_oldest_in_one_push() -> None:
    bl = Backlog(100, max_bytes=10)
    for i in range(5):
        assert bl.push(f"t{i % 2}", bytes([i]) * 2) == 0
    assert bl.total_bytes == 10
    # 10 + 8 = 18: the four oldest 2-byte entries (across both topics) go
    assert bl.push("big", b"x" * 8) == 4
    assert bl.total_bytes == 10
    assert bl.dropped("t0") == 2 and bl.dropped("t1") == 2 and bl.dropped("big") == 0
    assert bl.drain("t0") == [b"\x04\x04"]
    assert bl.drain("t1") == []
    assert bl.drain("big") == [b"x" * 8]
    assert bl.dropped_total == 4


def test_byte_cap_and_count_cap_together() -> None:
    bl = Backlog(2, max_bytes=5)
    assert bl.push("t", b"11") == 0
    assert bl.push("t", b"22") == 0
    # count cap drops "11"; then 2 + 3 = 5 fits
    assert bl.push("t", b"333") == 1
    assert bl.total_bytes == 5
    # count cap drops "22", 3 + 3 = 6 > 5 drops "333" too
    assert bl.push("t", b"444") == 2
    assert bl.drain("t") == [b"444"]
    assert bl.dropped("t") == 3


def test_item_of_exactly_max_bytes_is_kept() -> None:
    bl = Backlog(10, max_bytes=8)
    bl.push("a", b"12")
    bl.push("b", b"34")
    assert bl.push("c", b"x" * 8) == 2
    assert bl.total_bytes == 8
    assert bl.drain("c") == [b"x" * 8]
    assert bl.dropped("a") == 1 and bl.dropped("b") == 1


def test_oversize_item_is_dropped_and_counted() -> None:
    bl = Backlog(10, max_bytes=8)
    assert bl.push("t", b"keep") == 0
    assert bl.push("t", b"x" * 9) == 1
    assert bl.dropped("t") == 1
    assert bl.dropped_total == 1
    # the oversize push evicted nothing else
    assert bl.len("t") == 1 and bl.total_bytes == 4 and len(bl) == 1
    assert bl.push("other", b"y" * 100) == 1
    assert bl.dropped("other") == 1 and bl.len("other") == 0
    assert bl.topics() == ["t"]
    assert bl.dropped_total == 2
    assert bl.drain("t") == [b"keep"]


def test_constructor_defaults_and_properties() -> None:
    bl = Backlog(7)
    assert bl.capacity == 7
    assert bl.max_bytes == 64 * 1024 * 1024
    assert bl.total_len == 0 and bl.total_bytes == 0 and bl.dropped_total == 0
    assert len(bl) == 0
    assert bl.topics() == []
    bl2 = Backlog(capacity=3, max_bytes=1)
    assert (bl2.capacity, bl2.max_bytes) == (3, 1)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param((0,), "capacity must be >= 1, got 0", id="capacity-0"),
        pytest.param((-1,), "capacity must be >= 1, got -1", id="capacity-negative"),
        pytest.param((1, 0), "max_bytes must be >= 1, got 0", id="max-bytes-0"),
        pytest.param((1, -5), "max_bytes must be >= 1, got -5", id="max-bytes-negative"),
        pytest.param((0, 0), "capacity must be >= 1", id="both-0"),
    ],
)
def test_constructor_errors(args: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Backlog(*args)


def test_repr_and_len() -> None:
    bl = Backlog(2, max_bytes=100)
    assert repr(bl) == "Backlog(capacity=2, max_bytes=100, total_len=0, dropped_total=0)"
    for it in items(5):
        bl.push("a", it)
    bl.push("b", b"b")
    assert len(bl) == 3 == bl.total_len
    assert repr(bl) == "Backlog(capacity=2, max_bytes=100, total_len=3, dropped_total=3)"
    bl.drain("a")
    assert len(bl) == 1
    assert repr(bl) == "Backlog(capacity=2, max_bytes=100, total_len=1, dropped_total=3)"


def test_drain_returns_independent_bytes() -> None:
    bl = Backlog(4)
    src = bytearray(b"abc")
    bl.push("t", bytes(src))
    src[0] = ord("z")
    (got,) = bl.drain("t")
    assert type(got) is bytes and got == b"abc"


def test_threads_every_item_accounted_for() -> None:
    n_pushers, per_pusher = 4, 5000
    bl = Backlog(64, max_bytes=64 * 1024)
    topics = ["t0", "t1", "t2"]
    start = threading.Barrier(n_pushers + 1)
    done = threading.Event()
    drained: list[bytes] = []
    pushed_dropped = [0] * n_pushers
    errors: list[BaseException] = []

    def pusher(p: int) -> None:
        try:
            start.wait()
            for i in range(per_pusher):
                pushed_dropped[p] += bl.push(topics[(p + i) % len(topics)], f"{p}:{i}:".encode() + b"x" * (i % 50))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def drainer() -> None:
        try:
            start.wait()
            while not done.is_set():
                for t in topics:
                    drained.extend(bl.drain(t, 17))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=pusher, args=(p,)) for p in range(n_pushers)]
    d = threading.Thread(target=drainer)
    for t in threads:
        t.start()
    d.start()
    for t in threads:
        t.join(timeout=60)
    done.set()
    d.join(timeout=60)
    assert not errors
    assert not any(t.is_alive() for t in threads) and not d.is_alive()

    left = {t: bl.drain(t) for t in topics}
    total_pushed = n_pushers * per_pusher
    n_left = sum(len(v) for v in left.values())
    dropped = sum(bl.dropped(t) for t in topics)
    assert len(drained) + n_left + dropped == total_pushed
    assert bl.dropped_total == dropped == sum(pushed_dropped)
    assert len(bl) == 0 and bl.total_bytes == 0
    assert all(bl.len(t) == 0 for t in topics)

    # no item duplicated or invented, and each pusher's items keep their order per topic
    seen = drained + [it for v in left.values() for it in v]
    assert len(set(seen)) == len(seen)
    keys = [tuple(int(x) for x in it.split(b":")[:2]) for it in seen]
    assert all(0 <= p < n_pushers and 0 <= i < per_pusher for p, i in keys)
    for t_idx, t in enumerate(topics):
        per_topic = [
            (p, i)
            for (p, i) in (tuple(int(x) for x in it.split(b":")[:2]) for it in drained + left[t])
            if (p + i) % len(topics) == t_idx
        ]
        for p in range(n_pushers):
            seq = [i for (q, i) in per_topic if q == p]
            assert seq == sorted(seq)
