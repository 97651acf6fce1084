"""A test CA and signers: real CMS SignedData packages, signed with keys made here."""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _name(common_name: str, tax_id: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if tax_id is not None:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, tax_id))
    return x509.Name(attributes)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Signer:
    certificate: x509.Certificate
    key: Key

    def sign(
        self, content: dict[str, Any] | bytes, digest: hashes.HashAlgorithm | None = None
    ) -> str:
        """`signed_data`: base64 of a DER SignedData with `content` attached."""
        data = content if isinstance(content, bytes) else orjson.dumps(content)
        der = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(data)
            .add_signer(self.certificate, self.key, digest or hashes.SHA256())
            .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
        )
        return base64.b64encode(der).decode()


class TestCA:
    """A self-signed CA that issues signers' certificates."""

    __test__ = False

    def __init__(self, name: str = "Test Medical CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = self.key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str = "Test Doctor",
        *,
        tax_id: str | None = "3126509816",
        key: Key | None = None,
        valid_for: datetime.timedelta = datetime.timedelta(days=30),
        valid_from: datetime.timedelta = datetime.timedelta(days=-1),
        key_usage: x509.KeyUsage | None = None,
        ca: bool = False,
    ) -> Signer:
        key = key or ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, tax_id))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() + valid_from)
            .not_valid_after(_now() + valid_from + valid_for)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if key_usage is not None:
            builder = builder.add_extension(key_usage, critical=True)
        return Signer(builder.sign(self.key, hashes.SHA256()), key)


def key_usage(**allowed: bool) -> x509.KeyUsage:
    """A KeyUsage extension allowing only what is named (`digital_signature=True`, ...)."""
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    )
    flags = {name: allowed.get(name, False) for name in names}
    return x509.KeyUsage(**flags, encipher_only=False, decipher_only=False)
