"""`signed_data`: what an MIS signed, decoded, and who signed it.

eHealth's requests carry their content as `signed_data`, base64 of a CMS (PKCS #7) SignedData
whose encapsulated content is the JSON the MIS signed. Two decoders, chosen by
`SIGNATURE_MODE`:

- `CmsSignatureVerifier` (production): parses the SignedData (asn1crypto), checks the message
  digest and the signature over the signed attributes, and the signer's certificate chain up
  to a configured CA, at the current time (cryptography). RSA (PKCS #1 v1.5 and PSS) and ECDSA
  with SHA-2 are verified; anything else, DSTU 4145 included, is refused.
- `Base64JsonDecoder` (development and tests): base64 of the JSON, no signature at all. It
  proves nothing about who sent the content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import verification

from service.domain.clock import utcnow

# The descriptions of the signature errors, in the original's words (its 422 at
# `$.signed_data`, rule `invalid`). Why a signature was refused is logged, not shown, as the
# original's signature service answers only that the content is invalid.
INVALID_SIGNATURE = "Invalid signed content"
NOT_BASE64 = "Not a base64 string"
NOT_JSON = "Malformed encoded content. Probably, you have encoded corrupted JSON."
# DSTU 4145 (the Ukrainian standard) and its hash, GOST 34.311: no Python library verifies
# them; a deployment that takes them verifies in front of this service (docs/operations.md,
# "Signatures").
DSTU_4145_OID_PREFIX = "1.2.804.2.1.1.1.1.3.1"

# What a hostile or broken SignedData can make the parsers raise, besides a refusal.
_MALFORMED = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class SignatureRejected(Exception):
    """`signed_data` cannot be taken: `description` is what the client is told, `reason`
    what the log says."""

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(reason)
        self.description = description
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Signer:
    """The signer's certificate, as recorded with what it signed."""

    subject: str
    serial_number: str
    not_before: datetime
    not_after: datetime
    # The holder's registration number (DRFO / tax id) where the certificate names one, in
    # the subject's serialNumber as Ukrainian qualified certificates do.
    tax_id: str | None = None

    @classmethod
    def of(cls, certificate: x509.Certificate) -> Signer:
        serials = certificate.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)
        return cls(
            subject=certificate.subject.rfc4514_string(),
            serial_number=format(certificate.serial_number, "x"),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            tax_id=str(serials[0].value) if serials else None,
        )

    def to_document(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "serial_number": self.serial_number,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "tax_id": self.tax_id,
        }


@dataclass(frozen=True, slots=True)
class SignedContent:
    content: dict[str, Any]
    # None when the mode verifies nothing (`decode`).
    signer: Signer | None


class SignatureDecoder(Protocol):
    mode: str

    def decode(self, signed_data: str) -> SignedContent: ...


def _base64(signed_data: str) -> bytes:
    try:
        return base64.b64decode(signed_data, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureRejected(NOT_BASE64, "signed_data is not base64") from None


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise SignatureRejected(NOT_JSON, "the signed content is not JSON") from None
    if not isinstance(value, dict):
        raise SignatureRejected(NOT_JSON, "the signed content is not a JSON object")
    return value


class Base64JsonDecoder:
    """`SIGNATURE_MODE=decode`: base64 of the JSON content, nothing verified."""

    mode = "decode"

    def decode(self, signed_data: str) -> SignedContent:
        return SignedContent(_json_object(_base64(signed_data)), None)


def encode_unsigned(content: dict[str, Any]) -> str:
    """`signed_data` as `Base64JsonDecoder` reads it: for development and tests."""
    return base64.b64encode(orjson.dumps(content)).decode()


def decode_unsigned(signed_data: str) -> dict[str, Any]:
    """The content of unsigned `signed_data` (`encode_unsigned`'s inverse)."""
    return Base64JsonDecoder().decode(signed_data).content


class CmsSignatureVerifier:
    """`SIGNATURE_MODE=cms`: a DER CMS SignedData with the content attached, its one signer
    trusted through `ca_certificates`."""

    mode = "cms"

    def __init__(
        self,
        ca_certificates: Sequence[x509.Certificate],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if not ca_certificates:
            raise ValueError("cms signatures need at least one CA certificate")
        self._store = verification.Store(list(ca_certificates))
        self._clock = clock

    @classmethod
    def from_pem(cls, pem: bytes) -> CmsSignatureVerifier:
        return cls(x509.load_pem_x509_certificates(pem))

    def decode(self, signed_data: str) -> SignedContent:
        der = _base64(signed_data)
        try:
            content, certificate = self._verified(der)
            signer = Signer.of(certificate)
        except SignatureRejected:
            raise
        except _MALFORMED as exc:
            raise SignatureRejected(
                INVALID_SIGNATURE, f"not a usable SignedData: {exc!r}"
            ) from None
        return SignedContent(_json_object(content), signer)

    def _verified(self, der: bytes) -> tuple[bytes, x509.Certificate]:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise SignatureRejected(INVALID_SIGNATURE, "not a SignedData")
        signed = info["content"]
        content = signed["encap_content_info"]["content"].native
        if not isinstance(content, bytes):
            raise SignatureRejected(INVALID_SIGNATURE, "detached signatures are not taken")
        signer_infos = list(signed["signer_infos"])
        if len(signer_infos) != 1:
            description = (
                f"document must be signed by 1 signer but contains {len(signer_infos)} signatures"
            )
            raise SignatureRejected(description, "exactly one signer is taken")
        certificates = [
            x509.load_der_x509_certificate(choice.chosen.dump())
            for choice in signed["certificates"] or []
            if choice.name == "certificate"
        ]
        signer_info = signer_infos[0]
        certificate = _signer_certificate(signer_info, certificates)
        self._check_signature(signer_info, certificate, content)
        self._check_chain(certificate, certificates)
        return content, certificate

    def _check_signature(
        self, signer_info: cms.SignerInfo, certificate: x509.Certificate, content: bytes
    ) -> None:
        digest_name = signer_info["digest_algorithm"]["algorithm"].native
        signature_oid = signer_info["signature_algorithm"]["algorithm"].dotted
        if signature_oid.startswith(DSTU_4145_OID_PREFIX) or digest_name not in _HASHES:
            raise SignatureRejected(
                INVALID_SIGNATURE, f"unsupported algorithm {signature_oid} with {digest_name}"
            )
        algorithm = _HASHES[digest_name]()
        signed_attrs = signer_info["signed_attrs"]
        if signed_attrs:
            attributes = {attr["type"].native: attr["values"] for attr in signed_attrs}
            digest = attributes.get("message_digest")
            expected = hashlib.new(digest_name, content).digest()
            if not digest or len(digest) != 1 or digest[0].native != expected:
                raise SignatureRejected(INVALID_SIGNATURE, "the message digest does not match")
            # The signature covers the attributes as a SET, not as the [0] they are sent as.
            to_verify = b"\x31" + signed_attrs.dump()[1:]
        else:
            to_verify = content
        signature = signer_info["signature"].native
        key = certificate.public_key()
        scheme = signer_info["signature_algorithm"].signature_algo
        try:
            if isinstance(key, rsa.RSAPublicKey) and scheme == "rsassa_pkcs1v15":
                key.verify(signature, to_verify, padding.PKCS1v15(), algorithm)
            elif isinstance(key, rsa.RSAPublicKey) and scheme == "rsassa_pss":
                pss = padding.PSS(padding.MGF1(algorithm), padding.PSS.AUTO)
                key.verify(signature, to_verify, pss, algorithm)
            elif isinstance(key, ec.EllipticCurvePublicKey) and scheme == "ecdsa":
                key.verify(signature, to_verify, ec.ECDSA(algorithm))
            else:
                raise SignatureRejected(
                    INVALID_SIGNATURE, f"unsupported algorithm {signature_oid} with {digest_name}"
                )
        except InvalidSignature:
            raise SignatureRejected(INVALID_SIGNATURE, "the signature does not verify") from None

    def _check_chain(
        self, certificate: x509.Certificate, intermediates: list[x509.Certificate]
    ) -> None:
        verifier = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(self._clock())
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        others = [c for c in intermediates if c != certificate]
        try:
            verifier.verify(certificate, others)
        except verification.VerificationError as exc:
            raise SignatureRejected(INVALID_SIGNATURE, f"untrusted signer: {exc}") from None
        _check_signing_certificate(certificate)


def _check_signing_certificate(certificate: x509.Certificate) -> None:
    """A certificate for signatures: not a CA's, and where it says what its key is for,
    signing (digitalSignature or nonRepudiation). The chain's policy checks the CAs; this is
    the leaf's. Revocation is not checked: see docs/operations.md, "Signatures"."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        if constraints.value.ca:
            raise SignatureRejected(INVALID_SIGNATURE, "the signer's certificate is a CA's")
    except x509.ExtensionNotFound:
        pass
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not (usage.digital_signature or usage.content_commitment):
        raise SignatureRejected(INVALID_SIGNATURE, "the signer's key is not for signatures")


def _signer_certificate(
    signer_info: cms.SignerInfo, certificates: list[x509.Certificate]
) -> x509.Certificate:
    sid = signer_info["sid"]
    for certificate in certificates:
        if sid.name == "issuer_and_serial_number":
            if (
                certificate.serial_number == sid.chosen["serial_number"].native
                and certificate.issuer.public_bytes() == sid.chosen["issuer"].dump()
            ):
                return certificate
        else:
            try:
                ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                continue
            if ski.value.digest == sid.chosen.native:
                return certificate
    raise SignatureRejected(INVALID_SIGNATURE, "the signer's certificate is not in the message")
