"""What a node looks like in DNS-SD for the mDNS registry: the TXT entries written for it
(``txt_properties``, validated, never truncated), the checks on its instance name (the node
id), and reading a resolved instance back into a node (``parse_info``). No I/O.
"""

from __future__ import annotations

from zeroconf import (  # type: ignore[attr-defined]  # service_type_name: kept "for compat" upstream
    BadTypeInNameException,
    IPVersion,
    service_type_name,
)
from zeroconf.asyncio import AsyncServiceInfo

from ..errors import RegistryError
from .base import MICRO_SERVICE, SERVICE_PREFIX, Node, Service, topic_of
from .mdns_addresses import best_address

__all__ = ["DEFAULT_SERVICE_TYPE", "Entry", "ServiceKey", "parse_info", "txt_properties", "validate_id"]

#: The DNS-SD service type every hyperbroker node is announced under.
DEFAULT_SERVICE_TYPE = "_hyperbroker._tcp.local."

#: TXT keys the registry itself writes; node metadata may not use them.
RESERVED_KEYS = frozenset({"name", "topic", "version", "path"})
#: The subscriber endpoint path (go-micro's HTTP broker).
SUB_PATH = "/_sub"
#: RFC 6763 §6.1: each TXT "key=value" string is at most 255 bytes.
MAX_TXT_ENTRY = 255
#: The whole TXT record has to fit in one mDNS packet next to the PTR/SRV/A records
#: (zeroconf drops packets over ~9000 bytes with only a log line).
MAX_TXT_TOTAL = 8000
#: RFC 6763 §4.1.1: an instance name is one DNS label, at most 63 bytes.
MAX_INSTANCE = 63

ServiceKey = tuple[str, str]  # (service name, version)
Entry = tuple[ServiceKey, Node]  # one node of one service version


def txt_properties(service: Service, node: Node) -> dict[str, str]:
    """The TXT entries of a node, validated (never truncated)."""
    props: dict[str, str] = {"name": service.name}
    topic = topic_of(service.name)
    if topic is not None:
        props["topic"] = topic
    props["version"] = service.version
    props["path"] = "/" if service.name == MICRO_SERVICE else SUB_PATH
    for key, value in node.metadata.items():
        if key == "topic" and props.get("topic", value) == value:
            props["topic"] = value  # the broker's metadata topic=<topic> (the TXT topic entry)
            continue
        if key in RESERVED_KEYS:
            raise RegistryError(
                f"node {node.id!r}: metadata key {key!r} is reserved by the mDNS registry "
                f"(reserved: {', '.join(sorted(RESERVED_KEYS))})"
            )
        if not key or "=" in key or not key.isascii() or not key.isprintable():
            raise RegistryError(
                f"node {node.id!r}: metadata key {key!r} cannot be a DNS-SD TXT key "
                "(printable ASCII, no '=', not empty)"
            )
        props[key] = str(value)
    total = 0
    for key, value in props.items():
        size = len(key.encode()) + 1 + len(value.encode())
        if size > MAX_TXT_ENTRY:
            raise RegistryError(
                f"node {node.id!r}: TXT entry {key!r} is {size} bytes as 'key=value'; DNS-SD "
                f"allows at most {MAX_TXT_ENTRY} bytes per entry (RFC 6763 §6.1), so shorten "
                f"{'the service name' if key in ('name', 'topic') else 'its value'}"
            )
        total += 1 + size
    if total > MAX_TXT_TOTAL:
        raise RegistryError(
            f"node {node.id!r}: TXT record would be {total} bytes; the mDNS registry allows at "
            f"most {MAX_TXT_TOTAL} (it must fit one packet) - carry less metadata"
        )
    return props


def validate_id(node_id: str, service_type: str) -> None:
    """RegistryError unless ``node_id`` can be an instance name of ``service_type``."""
    size = len(node_id.encode())
    if not node_id or size > MAX_INSTANCE:
        raise RegistryError(
            f"node id {node_id!r} is {size} bytes; an mDNS instance name (the node id) must "
            f"be 1..{MAX_INSTANCE} bytes (RFC 6763 §4.1.1) - use a shorter node id"
        )
    if "" in node_id.split("."):
        raise RegistryError(f"node id {node_id!r}: empty DNS label (leading, trailing or '..')")
    try:
        service_type_name(f"{node_id}.{service_type}")
    except BadTypeInNameException as e:
        raise RegistryError(f"node id {node_id!r} cannot be an mDNS instance name: {e}") from e


def parse_info(info: AsyncServiceInfo) -> Entry | None:
    """The node a resolved instance announces, or None if it is not a hyperbroker node."""
    props = info.decoded_properties
    name = props.get("name")
    if not name:
        topic = props.get("topic")
        if topic is None:
            return None
        name = SERVICE_PREFIX + topic
    version = props.get("version") or ""
    port = info.port
    ips = info.ip_addresses_by_version(IPVersion.All)
    if not port or not ips:
        return None
    metadata = {k: v or "" for k, v in props.items() if k not in RESERVED_KEYS}
    topic = props.get("topic")
    if topic and topic_of(name) is None:
        metadata["topic"] = topic  # a micro.http.broker node's topic: only in its metadata
    node = Node(info.get_name(), best_address(ips, port), metadata)
    return (name, version), node
