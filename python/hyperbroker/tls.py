"""TLS settings of a broker (the work is done in Rust by rustls)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from .errors import BrokerError

__all__ = ["TLSConfig", "local_hosts", "read_pem"]


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


def read_pem(path: str | Path | None, what: str) -> bytes | None:
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
