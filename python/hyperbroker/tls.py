"""TLS settings of a broker (the work is done in Rust by rustls)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BrokerError

if TYPE_CHECKING:
    from . import _core
    from .options import BrokerOptions

__all__ = ["TLSConfig", "configure_engine", "local_hosts", "read_pem"]


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Real TLS with files in PEM format.

    cert_file / key_file: this broker's certificate chain and private key. The endpoint serves
        HTTPS with them, and with ``client_auth`` they are presented to peers that ask.
    ca_file: the CA that peer certificates must chain to.
    verify: publishers verify each peer's certificate against ``ca_file`` (and its address
        against the certificate's names). ``False`` accepts any certificate, as go-micro does.
    client_auth: the endpoint refuses clients without a certificate signed by ``ca_file``.

    Without ``cert_file``/``key_file`` only publishing is affected (peers are verified).
    """

    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    ca_file: str | Path | None = None
    verify: bool = True
    client_auth: bool = False

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise BrokerError("TLSConfig needs both cert_file and key_file (or neither)")
        if (self.verify or self.client_auth) and self.ca_file is None:
            raise BrokerError("TLSConfig with verify=True or client_auth=True needs ca_file")
        if self.client_auth and self.cert_file is None:
            raise BrokerError("TLSConfig with client_auth=True needs cert_file and key_file")

    @property
    def serves(self) -> bool:
        """Whether the endpoint serves HTTPS with these files."""
        return self.cert_file is not None


def configure_engine(engine: _core.Engine, options: BrokerOptions, host: str) -> None:
    """Give ``engine`` what ``options`` ask for before it listens on ``host``: the endpoint's
    certificate (``tls`` files, or a self-signed one naming ``host``'s addresses and
    ``advertise`` with ``secure=True``) and the CA that peers are verified against."""
    t = options.tls
    if t is not None and t.serves:
        engine.configure_tls(
            cert_pem=read_pem(t.cert_file, "certificate"),
            key_pem=read_pem(t.key_file, "private key"),
            ca_pem=read_pem(t.ca_file, "CA"),
            verify=t.verify,
            client_auth=t.client_auth,
        )
        return
    if options.secure:
        hosts = local_hosts(host)
        if options.advertise:
            adv = options.advertise
            adv_host = _host_of(adv) if ":" in adv else adv
            hosts.insert(0, adv_host)
        engine.configure_tls(self_signed_hosts=hosts)
    if t is not None and t.verify:
        ca = read_pem(t.ca_file, "CA")
        assert ca is not None  # TLSConfig checks it
        engine.verify_peers(ca)


def _host_of(address: str) -> str:
    from .options import parse_address

    return parse_address(address)[0]


def read_pem(path: str | Path | None, what: str) -> bytes | None:
    """The bytes of a PEM file, or None without a path; a file that cannot be read is a
    BrokerError naming it."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise BrokerError(f"cannot read the {what} file {str(path)!r}: {e.strerror or e}") from None


def local_hosts(host: str) -> list[str]:
    """Hosts a self-signed certificate should name for an endpoint bound to ``host``."""
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return [host]
    if not unspecified:
        return [host]
    hosts = ["127.0.0.1", "::1"]
    try:
        import ifaddr

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                addr = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
                if addr not in hosts and "%" not in addr:
                    hosts.append(addr)
    except Exception:  # pragma: no cover - interface listing is best effort
        pass
    return hosts
