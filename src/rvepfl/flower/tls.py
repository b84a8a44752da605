"""A self-signed certificate authority and a server certificate, for TLS on loopback.

For trying TLS with a local federation (``rvepfl flower-local --tls``) and for the tests: the
SuperLink serves with ``server.pem``/``server.key`` (signed by ``ca.crt``, valid for 127.0.0.1,
::1 and localhost), and SuperNodes and ``flwr`` verify it with ``ca.crt``. Across machines,
use certificates from your own CA for the SuperLink's real host name (see the README).
Made with the ``cryptography`` package (a dependency of flwr).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from rvepfl.io import atomic_write_bytes

__all__ = ["Certificates", "NodeKey", "make_certificates", "make_node_key"]


@dataclass(frozen=True)
class Certificates:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_certificates(directory: str | Path, *, days: int = 7) -> Certificates:
    """Write ``ca.crt``, ``server.pem`` and ``server.key`` (EC P-256) into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rvepfl local CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid[0]).not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid[0]).not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = Certificates(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    atomic_write_bytes(out.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(out.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(out.server_key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), mode=0o600)
    return out


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's key pair for node authentication, in the OpenSSH formats Flower reads."""

    private_key: Path
    public_key: Path


def make_node_key(directory: str | Path, name: str = "node") -> NodeKey:
    """Write a fresh EC (NIST P-384) key pair for SuperNode authentication into ``directory``:
    ``<name>.key`` (OpenSSH private key, for ``flower-supernode --auth-supernode-private-key``)
    and ``<name>.pub`` (OpenSSH public key, for ``flwr supernode register``), what
    ``ssh-keygen -t ecdsa -b 384 -N '' -f <name>`` writes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = directory / f"{name}.key"
    public = directory / f"{name}.pub"
    atomic_write_bytes(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()), mode=0o600)
    atomic_write_bytes(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                             serialization.PublicFormat.OpenSSH))
    return NodeKey(private, public)
