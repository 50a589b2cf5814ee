"""Test PKI made with ``cryptography``: a CA and leaf certificates it signs, written as PEM files.

    ca = make_ca(tmp_path, "ca-a")
    leaf = ca.issue(tmp_path, "server-1")       # SAN IP 127.0.0.1 + DNS localhost, server+client EKU
    TLSConfig(cert_file=leaf.cert, key_file=leaf.key, ca_file=ca.cert, verify=True)

Keys are ECDSA P-256 (fast to generate); private keys are written as unencrypted PKCS#8.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "Leaf", "make_ca"]


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hyperbroker tests"),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.CertificateBuilder:
    """A certificate valid from an hour ago for two days, with the basic constraints, key usage
    and subject key identifier of a CA (``ca``) or of a leaf."""
    now = _dt.datetime.now(_dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(hours=1))
        .not_valid_after(now + _dt.timedelta(days=2))
    )
    b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    b = b.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    return b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CA:
    name: str
    cert: Path
    key_obj: ec.EllipticCurvePrivateKey
    cert_obj: x509.Certificate

    def issue(
        self,
        directory: Path,
        name: str,
        ips: tuple[str, ...] = ("127.0.0.1",),
        dns: tuple[str, ...] = ("localhost",),
    ) -> Leaf:
        """A leaf certificate signed by this CA, usable for both server and client auth."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        sans += [x509.DNSName(d) for d in dns]
        b = _builder(name, self.cert_obj.subject, key, ca=False)
        b = b.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key_obj.public_key()), critical=False
        )
        cert = b.sign(self.key_obj, hashes.SHA256())
        cert_path = directory / f"{name}.crt"
        key_path = directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        return Leaf(cert_path, key_path)


def make_ca(directory: Path, name: str) -> CA:
    """A self-signed CA certificate (written to ``<directory>/<name>.crt``)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    b = _builder(name, _name(name), key, ca=True)
    cert = b.sign(key, hashes.SHA256())
    path = directory / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CA(name, path, key, cert)
