"""Throwaway TLS material for an etcd cluster with client certificates: a CA, a server certificate
for the slot's loopback addresses, and a client certificate and key for the function.

Why generated per stack: the security test must know the exact private key the function loads, to
prove none of it ever reaches a log line, and no key may be committed to the repository. Built with
`cryptography`, which moto already requires (so it is in the venv wherever the stack runs). Keys
are RSA 2048 in PKCS#8 PEM ("BEGIN PRIVATE KEY"), the form etcd's own tooling writes.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass


@dataclass
class TlsFiles:
    """Paths of the PEM files (see `make_tls`)."""

    dir: str
    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def client_key_pem(self) -> str:
        with open(self.client_key) as f:
            return f.read()


def _key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(subject_cn: str, key, issuer_cn: str, issuer_key, *, ca: bool, usage, ips=()):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
    if ips:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]),
            critical=False,
        )
    from cryptography.hazmat.primitives import serialization

    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_tls(directory: str, ips: list[str], ca_name: str = "etcd-test-ca") -> TlsFiles:
    """Writes ca.crt, server.crt/.key (SANs: `ips`, serverAuth and clientAuth, as etcd peers and
    servers use them) and client.crt/.key (clientAuth) under `directory`."""
    from cryptography.x509.oid import ExtendedKeyUsageOID as EKU

    os.makedirs(directory, exist_ok=True)
    ca_key = _key()
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True, usage=())
    server_key = _key()
    server = _cert(
        "etcd", server_key, ca_name, ca_key, ca=False,
        usage=(EKU.SERVER_AUTH, EKU.CLIENT_AUTH), ips=ips,
    )  # fmt: skip
    client_key = _key()
    client = _cert(
        "etcd-lifecycle-hook", client_key, ca_name, ca_key, ca=False, usage=(EKU.CLIENT_AUTH,)
    )
    files = TlsFiles(
        dir=directory,
        ca_cert=os.path.join(directory, "ca.crt"),
        server_cert=os.path.join(directory, "server.crt"),
        server_key=os.path.join(directory, "server.key"),
        client_cert=os.path.join(directory, "client.crt"),
        client_key=os.path.join(directory, "client.key"),
    )
    for path, data in (
        (files.ca_cert, ca),
        (files.server_cert, server),
        (files.server_key, _pem_key(server_key)),
        (files.client_cert, client),
        (files.client_key, _pem_key(client_key)),
    ):
        with open(path, "wb") as f:
            f.write(data)
        if path.endswith(".key"):
            os.chmod(path, 0o600)
    return files


def client_ssl_context(files: TlsFiles):
    """An `ssl` context for this module's own checks against a TLS cluster."""
    import ssl

    context = ssl.create_default_context(cafile=files.ca_cert)
    context.load_cert_chain(files.client_cert, files.client_key)
    return context
