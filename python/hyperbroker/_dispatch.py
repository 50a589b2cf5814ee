"""From one engine wake-up to the handlers: a batch of received events split by subscriber
(:func:`dispatch`), handlers' return values encoded as replies (:func:`encode_replies`), and
messages given up after ``max_deliveries`` handed to the user (:func:`dead_letters`).

The broker calls :func:`dispatch` with what ``Engine.take()`` returned and settles the batch with
one ``Engine.done()`` call afterwards: nothing here runs per message except the handler itself
(inside ``Subscriber.deliver_batch``) and, for replies, their encoding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from .callbacks import Events
from .errors import BrokerError
from .message import Event, Message, to_wire
from .options import BrokerOptions
from .subscriber import Reply, SubscriptionBase

__all__ = [
    "DELIVERIES_HEADER",
    "ERROR_HEADER",
    "NODE_HEADER",
    "ORIGINAL_TOPIC_HEADER",
    "DeadLetter",
    "dead_letter_header",
    "dead_letters",
    "dispatch",
    "encode_replies",
]

log = logging.getLogger("hyperbroker")

#: the header a dead letter carries: the topic it was published to, the node (``id@address``)
#: and the error of its last failed attempt, and how many attempts failed
ORIGINAL_TOPIC_HEADER = "X-Hyperbroker-Original-Topic"
NODE_HEADER = "X-Hyperbroker-Node"
ERROR_HEADER = "X-Hyperbroker-Error"
DELIVERIES_HEADER = "X-Hyperbroker-Deliveries"

#: what ``Engine.take()`` reports of a message given up: (topic, message, node id, node
#: address, last error, attempts)
DeadLetter = tuple[str, Message, str, str, str, int]


def encode_replies(
    replies: Sequence[Reply], failures: list[tuple[int, str]]
) -> list[tuple[int, str, dict[str, str] | None, bytes]]:
    """Handlers' return values as the engine takes them (token, topic, header, body), encoded as
    ``publish`` encodes; a value that cannot be sent fails its delivery (into ``failures``)."""
    out: list[tuple[int, str, dict[str, str] | None, bytes]] = []
    for ev, value in replies:
        try:
            h, body = to_wire(value)
        except BrokerError as e:
            failures.append((ev._token, f"the handler's reply cannot be sent: {e}"))
            continue
        out.append((ev._token, ev.topic, h, body))
    return out


def dispatch(
    subs: Mapping[str, SubscriptionBase],
    sub_ids: Sequence[str],
    events: Sequence[Event],
    failures: list[tuple[int, str]],
    deferred: list[int],
    replies: list[Reply] | None = None,
) -> None:
    """Hand one wake-up's events to their subscribers (``sub_ids[i]`` names the subscriber of
    ``events[i]``): one ``deliver_batch`` call per subscriber, with its events in arrival order.
    Events of a subscriber that is gone fail. If a handler is interrupted (KeyboardInterrupt...),
    the subscriber fails what it did not finish and the later subscribers' events fail here."""
    if not events:
        return
    groups: list[tuple[str, Sequence[Event]]]
    if sub_ids.count(sub_ids[0]) == len(sub_ids):
        # the usual case (one subscriber, or a batch POST for one): no per-event work here
        groups = [(sub_ids[0], events)]
    else:
        by_sub: dict[str, list[Event]] = {}
        for sub_id, ev in zip(sub_ids, events, strict=False):
            run = by_sub.get(sub_id)
            if run is None:
                by_sub[sub_id] = [ev]
            else:
                run.append(ev)
        groups = list(by_sub.items())
    done = 0
    try:
        for sub_id, batch in groups:
            sub = subs.get(sub_id)
            if sub is None:
                failures.extend((ev._token, "subscriber is gone") for ev in batch)
            else:
                sub.deliver_batch(batch, failures, deferred, replies)
            done += 1
    except BaseException:
        failures.extend((ev._token, "handler interrupted") for _, later in groups[done + 1 :] for ev in later)
        raise


def dead_letter_header(
    header: Mapping[str, str] | None, topic: str, node: str, error: str, attempts: int
) -> dict[str, str]:
    """A dead letter's header: the message's own, plus where and why it failed."""
    out = dict(header or {})
    out.update(
        {
            ORIGINAL_TOPIC_HEADER: topic,
            NODE_HEADER: node,
            ERROR_HEADER: error,
            DELIVERIES_HEADER: str(attempts),
        }
    )
    return out


def dead_letters(
    dead: Sequence[DeadLetter],
    options: BrokerOptions,
    events: Events,
    publish: Callable[[str, dict[str, str], bytes], object] | None,
) -> None:
    """Messages this broker published that a subscription failed ``max_deliveries`` times: to
    ``on_undeliverable`` and, through ``publish`` (None once disconnected), to the dead-letter
    topic with where and why they failed in the header (never back to the same topic)."""
    o = options
    for topic, msg, node, address, error, attempts in dead:
        if o.on_undeliverable is not None:
            events.call("on_undeliverable", o.on_undeliverable, topic, msg, error)
        dlq = o.dead_letter_topic
        if dlq is not None and dlq != topic and publish is not None:
            header = dead_letter_header(msg.header, topic, f"{node}@{address}", error, attempts)
            try:
                publish(dlq, header, msg.body)
            except BrokerError as e:
                log.warning("could not dead-letter a message of %r to %r: %s", topic, dlq, e)
                events.error(BrokerError(f"could not dead-letter a message of {topic!r} to {dlq!r}: {e}"))
    if dead and o.on_undeliverable is None and o.dead_letter_topic is None:
        log.warning(
            "%d message(s) given up after max_deliveries=%s failed attempts (set on_undeliverable or"
            " dead_letter_topic to keep them); last error: %s",
            len(dead),
            o.max_deliveries,
            dead[-1][4],
        )
