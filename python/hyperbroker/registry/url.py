"""Registries named by a URL string: what ``Broker(registry="...")``, the
``HYPERBROKER_REGISTRY`` environment variable and the CLI's ``--registry`` accept.

    memory://                           a new MemoryRegistry each time ("memory" too): brokers
                                        given this URL do not see each other; share an object
    mdns://                             MdnsRegistry on every interface ("mdns" too)
    mdns://?interfaces=127.0.0.1,::1    MdnsRegistry bound to those addresses
    etcd://127.0.0.1:2379               EtcdRegistry ("etcd" alone: 127.0.0.1:2379)
    etcd://h1:2379,h2:2379,h3           a cluster (default port 2379); the client fails over
    etcd://user:secret@h1:2379          etcd authentication (percent-encode special characters)
    etcd://h1:2379?prefix=/micro/registry/&timeout=5
    etcd://h1:2379?ca=ca.pem&cert=client.pem&key=client-key.pem   TLS to etcd

etcd query options: ``prefix`` (default ``/micro/registry/``), ``timeout`` (seconds, default
5), ``ca`` / ``cert`` / ``key`` (PEM files; any of them turns TLS on, ``ca`` is required then).
A malformed URL raises :class:`~hyperbroker.BrokerError` naming what is wrong.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import BrokerError
from .base import Registry

__all__ = ["ENV_VAR", "RegistrySpec", "from_env", "from_url", "parse_url"]

#: The environment variable a Broker without a ``registry`` option reads.
ENV_VAR = "HYPERBROKER_REGISTRY"

_SCHEMES = ("memory", "mdns", "etcd")
_ETCD_OPTIONS = ("prefix", "timeout", "ca", "cert", "key")
_MDNS_OPTIONS = ("interfaces",)


@dataclass(frozen=True)
class RegistrySpec:
    """A parsed registry URL: the kind and the constructor's keyword arguments."""

    kind: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _bad(url: str, why: str) -> BrokerError:
    return BrokerError(
        f"bad registry URL {url!r}: {why} (forms: memory://, mdns://, "
        "etcd://host:port[,host:port...][?prefix=...&timeout=...])"
    )


def parse_url(url: str) -> RegistrySpec:
    """Parse and check a registry URL without creating anything."""
    if not isinstance(url, str):
        raise BrokerError(f"a registry URL must be a string, got {type(url).__name__}")
    text = url.strip()
    if text in _SCHEMES:
        text += "://"
    if "://" not in text:
        raise _bad(url, "no scheme")
    try:
        parts = urlsplit(text)
    except ValueError as e:
        raise _bad(url, str(e)) from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise _bad(url, f"unknown scheme {parts.scheme!r}; known: {', '.join(_SCHEMES)}")
    if parts.path not in ("", "/"):
        raise _bad(url, f"unexpected path {parts.path!r}")
    if parts.fragment:
        raise _bad(url, "unexpected '#' fragment")
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise _bad(url, f"malformed query {parts.query!r}") from None
    options: dict[str, str] = {}
    for k, v in query:
        if k in options:
            raise _bad(url, f"option {k!r} given twice")
        options[k] = v
    netloc = parts.netloc
    if scheme == "memory":
        if netloc or options:
            raise _bad(url, "memory:// takes no host and no options")
        return RegistrySpec("memory")
    if scheme == "mdns":
        if netloc:
            raise _bad(url, "mdns:// takes no host (use ?interfaces=addr,addr)")
        _unknown(url, options, _MDNS_OPTIONS)
        kwargs: dict[str, Any] = {}
        if "interfaces" in options:
            interfaces = [i for i in options["interfaces"].split(",") if i]
            if not interfaces:
                raise _bad(url, "interfaces is empty")
            kwargs["interfaces"] = interfaces
        return RegistrySpec("mdns", kwargs)
    return _parse_etcd(url, netloc, options)


def _unknown(url: str, options: dict[str, str], known: tuple[str, ...]) -> None:
    extra = sorted(set(options) - set(known))
    if extra:
        raise _bad(url, f"unknown option(s) {', '.join(extra)}; known: {', '.join(known)}")


def _parse_etcd(url: str, netloc: str, options: dict[str, str]) -> RegistrySpec:
    from .etcd import parse_endpoint  # no aetcd import: checking a URL needs no client

    _unknown(url, options, _ETCD_OPTIONS)
    kwargs: dict[str, Any] = {}
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if not user or not colon:
            raise _bad(url, "credentials must be user:password@")
        kwargs["username"] = unquote(user)
        kwargs["password"] = unquote(password)
    endpoints = [h for h in hosts.split(",")] if hosts else ["127.0.0.1:2379"]
    for e in endpoints:
        if not e:
            raise _bad(url, "empty host in the endpoint list")
        try:
            parse_endpoint(e)
        except BrokerError as err:
            raise _bad(url, str(err)) from None
    kwargs["endpoints"] = endpoints
    if "prefix" in options:
        prefix = options["prefix"]
        if not prefix.startswith("/"):
            raise _bad(url, f"prefix must start with '/', got {prefix!r}")
        kwargs["prefix"] = prefix
    if "timeout" in options:
        try:
            timeout = float(options["timeout"])
        except ValueError:
            timeout = -1.0
        if not (timeout > 0 and math.isfinite(timeout)):
            raise _bad(url, f"timeout must be a positive number of seconds, got {options['timeout']!r}")
        kwargs["timeout"] = timeout
    if any(k in options for k in ("ca", "cert", "key")):
        if not options.get("ca"):
            raise _bad(url, "TLS to etcd needs ca=<CA file>")
        if bool(options.get("cert")) != bool(options.get("key")):
            raise _bad(url, "cert= and key= go together")
        kwargs["tls"] = (options["ca"], options.get("cert") or None, options.get("key") or None)
    return RegistrySpec("etcd", kwargs)


def from_url(url: str) -> Registry:
    """A new registry for ``url`` (see the module doc). The caller owns and closes it."""
    spec = parse_url(url)
    if spec.kind == "memory":
        from .memory import MemoryRegistry

        return MemoryRegistry()
    if spec.kind == "mdns":
        from .mdns import MdnsRegistry

        return MdnsRegistry(**spec.kwargs)
    from ..tls import TLSConfig
    from .etcd import EtcdRegistry

    kwargs = dict(spec.kwargs)
    tls = kwargs.pop("tls", None)
    if tls is not None:
        ca, cert, key = tls
        kwargs["tls"] = TLSConfig(cert_file=cert, key_file=key, ca_file=ca, verify=True)
    return EtcdRegistry(**kwargs)


def from_env(default: str = "mdns://") -> Registry:
    """The registry named by ``$HYPERBROKER_REGISTRY`` (``default`` when unset or empty)."""
    value = os.environ.get(ENV_VAR, "").strip()
    try:
        return from_url(value or default)
    except BrokerError as e:
        if value:
            raise BrokerError(f"${ENV_VAR}: {e}") from None
        raise
