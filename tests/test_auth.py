"""Bearer-token authentication of the subscriber endpoint (``auth_token``) and token rotation.

The endpoint answers 401 (with ``WWW-Authenticate: Bearer`` and a reason) to a missing or wrong
token before it looks at the request; a publisher broker sends its first token. A publisher with
a wrong token loses nothing: its messages are retried and delivered once its token is fixed.
Rotation ``[new, old]`` -> send ``new`` -> drop ``old`` never stops delivery.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from brokers import MakeBroker, Sink, assert_counters, deliver_numbered, envelope, pick, post, until

from hyperbroker import BrokerError

pytestmark = pytest.mark.timeout(60)

TOPIC = "auth.events"


# --- the endpoint ---------------------------------------------------------------------------------


async def test_endpoint_requires_the_bearer_token(make_broker: MakeBroker, http: aiohttp.ClientSession) -> None:
    sub_b = await make_broker(auth_token="tok")
    sink = Sink()
    sub = await sub_b.subscribe(TOPIC, sink)
    url = f"http://{sub_b.address}/_sub?id={sub.id}"
    env = envelope(TOPIC, b"payload")

    status, text, headers = await post(http, url, env)
    assert (status, text) == (401, "missing bearer token")
    assert headers.get("WWW-Authenticate") == "Bearer"
    assert sink.ran is False

    for auth, reason in [
        ("Bearer wrong", "wrong bearer token"),
        ("Bearer tok2", "wrong bearer token"),
        ("Bearer to", "wrong bearer token"),
        ("Bearer  tok", "wrong bearer token"),
        ("Bearer tok tok", "wrong bearer token"),
        ("Basic tok", "missing bearer token"),
        ("tok", "missing bearer token"),
    ]:
        status, text, headers = await post(http, url, env, Authorization=auth)
        assert (status, text) == (401, reason), auth
        assert headers.get("WWW-Authenticate") == "Bearer"
    assert sink.ran is False

    # the token is checked before the body: an undecodable body without a token is a 401, not 400
    status, text, _ = await post(http, url, b"{not json")
    assert (status, text) == (401, "missing bearer token")
    assert sink.ran is False
    assert sub_b.stats()["rejected"] == 9
    assert sub_b.stats()["received"] == 0

    status, text, _ = await post(http, url, env, Authorization="Bearer tok")
    assert (status, text) == (200, "")
    assert sink.bodies == [b"payload"]
    status, _, _ = await post(http, url, envelope(TOPIC, b"lower"), Authorization="bearer tok")
    assert status == 200
    assert sink.bodies == [b"payload", b"lower"]
    st = sub_b.stats()
    assert (st["rejected"], st["received"]) == (9, 2)


async def test_publisher_with_the_token_delivers(make_broker: MakeBroker) -> None:
    sub_b = await make_broker(auth_token="tok")
    pub_b = await make_broker(auth_token="tok")
    sink = Sink()
    await sub_b.subscribe(TOPIC, sink)
    await pub_b.wait_for_route(TOPIC, 5)
    bodies = await deliver_numbered(pub_b, TOPIC, sink, 300)
    assert sink.bodies == bodies
    assert_counters(pub_b.stats(), delivered=300, retried=0, failed=0, dropped=0)
    assert sub_b.stats()["rejected"] == 0


async def test_publisher_without_token_or_with_wrong_token_loses_nothing(make_broker: MakeBroker) -> None:
    sub_b = await make_broker(auth_token="tok")
    wrong = await make_broker(auth_token="nope", retry_max=0.2)
    none = await make_broker(retry_max=0.2)
    sink = Sink()
    await sub_b.subscribe(TOPIC, sink)
    await wrong.wait_for_route(TOPIC, 5)
    await none.wait_for_route(TOPIC, 5)
    a = [f"w-{i}".encode() for i in range(10)]
    b = [f"n-{i}".encode() for i in range(10)]
    for x in a:
        await wrong.publish(TOPIC, x)
    for x in b:
        await none.publish(TOPIC, x)

    await until(lambda: wrong.stats()["retried"] >= 20 and none.stats()["retried"] >= 20, 5, "retries")
    assert sink.ran is False
    assert sub_b.stats()["received"] == 0
    assert sub_b.stats()["rejected"] >= 4
    errors = {}
    for p in (wrong, none):
        st = p.stats()
        # never counted delivered, never dropped or given up; still owed
        assert_counters(st, delivered=0, failed=0, dropped=0)
        assert st["in_flight"] + st["backlog"] == 10, pick(st, "in_flight", "backlog")
        errors[p] = st["last_error"]
    with pytest.raises(BrokerError, match="flush timed out"):
        await wrong.flush(timeout=0.3)

    # the token is fixed: everything that waited is delivered, in order, exactly once
    wrong.set_auth_tokens(["tok"])
    none.set_auth_tokens(["tok"])
    await wrong.flush(timeout=10)
    await none.flush(timeout=10)
    await until(lambda: len(sink.bodies) >= 20, 5, "20 handled")
    assert sorted(sink.bodies) == sorted(a + b)
    assert [x for x in sink.bodies if x.startswith(b"w-")] == a
    assert [x for x in sink.bodies if x.startswith(b"n-")] == b
    for p in (wrong, none):
        st = p.stats()
        assert_counters(st, delivered=10, failed=0, dropped=0, in_flight=0, backlog=0)

    # while refused, the reason was visible to the operator (stats()["last_error"])
    for err in errors.values():
        assert err is not None and "401" in err, f"last_error while every delivery got 401: {err!r}"


# --- rotation -------------------------------------------------------------------------------------


async def test_token_rotation_never_stops_delivery(make_broker: MakeBroker, http: aiohttp.ClientSession) -> None:
    sub_b = await make_broker(auth_token=["new", "old"])
    pub_b = await make_broker(auth_token="old")
    sink = Sink()
    sub = await sub_b.subscribe(TOPIC, sink)
    url = f"http://{sub_b.address}/_sub?id={sub.id}"
    await pub_b.wait_for_route(TOPIC, 5)

    published: list[bytes] = []
    stop = asyncio.Event()

    async def producer() -> None:
        i = 0
        while not stop.is_set():
            body = f"p-{i}".encode()
            await pub_b.publish(TOPIC, body)
            published.append(body)
            i += 1
            if i % 10 == 0:
                await asyncio.sleep(0.005)

    task = asyncio.create_task(producer())
    try:
        # phase 1: the subscriber accepts both, the publisher sends "old"
        await asyncio.sleep(0.3)
        n1 = len(published)
        await until(lambda: len(sink.bodies) >= n1, 5, "phase 1 delivered")
        # both tokens are accepted by the endpoint
        for tok in ("old", "new"):
            status, _, _ = await post(http, url, envelope(TOPIC, b"manual"), Authorization=f"Bearer {tok}")
            assert status == 200, tok

        # phase 2: the publisher sends "new"
        pub_b.set_auth_tokens(["new"])
        await asyncio.sleep(0.3)
        n2 = len(published)
        await until(lambda: len([x for x in sink.bodies if x != b"manual"]) >= n2, 5, "phase 2 delivered")

        # phase 3: the subscriber drops "old"
        sub_b.set_auth_tokens(["new"])
        status, text, _ = await post(http, url, envelope(TOPIC, b"refused"), Authorization="Bearer old")
        assert (status, text) == (401, "wrong bearer token")
        status, _, _ = await post(http, url, envelope(TOPIC, b"manual"), Authorization="Bearer new")
        assert status == 200
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)

    await pub_b.flush(timeout=10)
    total = len(published)
    assert total > 100  # the producer really ran through all three phases
    await until(lambda: len([x for x in sink.bodies if x != b"manual"]) >= total, 5, "all delivered")
    assert [x for x in sink.bodies if x != b"manual"] == published
    assert sink.bodies.count(b"manual") == 3
    assert b"refused" not in sink.bodies
    st = pub_b.stats()
    # not a single delivery was refused along the way
    assert_counters(st, published=total, delivered=total, retried=0, failed=0, dropped=0, in_flight=0)
    assert sub_b.stats()["rejected"] == 1  # only the manual "old" request of phase 3


async def test_set_auth_tokens_rejects_invalid_tokens(make_broker: MakeBroker) -> None:
    b = await make_broker(auth_token="tok")
    for bad in ([], [""], ["has space"], ["tab\t"], ["\u00fcn\u00ef"], ["ok", ""]):
        with pytest.raises(BrokerError, match="auth"):
            b.set_auth_tokens(bad)
    assert b.options.auth_tokens == ["tok"]  # unchanged by the refused calls


async def test_set_auth_tokens_takes_a_bare_string_as_one_token(
    make_broker: MakeBroker, http: aiohttp.ClientSession
) -> None:
    """``set_auth_tokens("secret")`` (a str, not a list) must not become ["s", "e", "c", ...]:
    that would make the endpoint accept one-character tokens. Like the ``auth_token`` option,
    a bare string is one token."""
    b = await make_broker(auth_token="tok")
    sink = Sink()
    sub = await b.subscribe(TOPIC, sink)
    try:
        b.set_auth_tokens("secret")  # a str is a Sequence[str]: the type checker does not catch it
    except BrokerError:
        pass
    url = f"http://{b.address}/_sub?id={sub.id}"
    status, _, _ = await post(http, url, envelope(TOPIC, b"one-char"), Authorization="Bearer s")
    assert status == 401, f"a one-character token was accepted; tokens are now {b.options.auth_tokens!r}"
    assert sink.ran is False
    assert b.options.auth_tokens == ["secret"]
    status, _, _ = await post(http, url, envelope(TOPIC, b"whole"), Authorization="Bearer secret")
    assert status == 200
    assert sink.ran is True
