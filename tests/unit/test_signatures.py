"""`signed_data` in both modes: real CMS SignedData made with keys and a CA made here, verified
or refused as the original's signature errors say; and unsigned base64 JSON."""

from __future__ import annotations

import base64
import datetime

import pytest
from asn1crypto import cms
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from service.signatures import (
    INVALID_SIGNATURE,
    NOT_BASE64,
    NOT_JSON,
    Base64JsonDecoder,
    CmsSignatureVerifier,
    SignatureRejected,
    encode_unsigned,
)
from tests.signing import TestCA, key_usage

CONTENT = {"encounter": {"id": "90a9e15b-b71b-4caf-8f2e-ff247e8a5600"}}


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def verifier(ca: TestCA) -> CmsSignatureVerifier:
    return CmsSignatureVerifier.from_pem(ca.pem)


def rejected(verifier, signed_data: str) -> SignatureRejected:
    with pytest.raises(SignatureRejected) as caught:
        verifier.decode(signed_data)
    return caught.value


@pytest.mark.parametrize("key", ["ec", "rsa"])
def test_a_package_signed_by_a_trusted_signer_is_read_with_its_signer(ca, verifier, key) -> None:
    private = rsa.generate_private_key(65537, 2048) if key == "rsa" else None
    signer = ca.issue("Olena Doctor", tax_id="3126509816", key=private)
    signed = verifier.decode(signer.sign(CONTENT))
    assert signed.content == CONTENT
    assert signed.signer.tax_id == "3126509816"
    assert "CN=Olena Doctor" in signed.signer.subject
    assert signed.signer.serial_number == format(signer.certificate.serial_number, "x")
    assert signed.signer.not_before <= datetime.datetime.now(datetime.UTC) < signed.signer.not_after


def test_a_changed_content_is_refused(ca, verifier) -> None:
    der = base64.b64decode(ca.issue().sign(CONTENT))
    tampered = der.replace(b"90a9e15b", b"90a9e15c")
    assert tampered != der
    error = rejected(verifier, base64.b64encode(tampered).decode())
    assert (error.description, error.reason) == (
        INVALID_SIGNATURE,
        "the message digest does not match",
    )


def test_a_signer_of_another_ca_is_refused(verifier) -> None:
    error = rejected(verifier, TestCA("Somebody else").issue().sign(CONTENT))
    assert error.description == INVALID_SIGNATURE
    assert error.reason.startswith("untrusted signer")


def test_an_expired_certificate_is_refused(ca, verifier) -> None:
    expired = ca.issue(
        valid_from=datetime.timedelta(days=-10), valid_for=datetime.timedelta(days=1)
    )
    error = rejected(verifier, expired.sign(CONTENT))
    assert error.reason.startswith("untrusted signer")


@pytest.mark.parametrize(
    ("usage", "reason"),
    [
        (key_usage(key_agreement=True), "the signer's key is not for signatures"),
        (key_usage(key_encipherment=True), "the signer's key is not for signatures"),
    ],
)
def test_a_certificate_whose_key_is_not_for_signatures_is_refused(ca, verifier, usage, reason):
    error = rejected(verifier, ca.issue(key_usage=usage).sign(CONTENT))
    assert (error.description, error.reason) == (INVALID_SIGNATURE, reason)


def test_a_signing_or_non_repudiation_key_is_taken(ca, verifier) -> None:
    for usage in (key_usage(digital_signature=True), key_usage(content_commitment=True)):
        assert verifier.decode(ca.issue(key_usage=usage).sign(CONTENT)).content == CONTENT


def test_an_empty_message_digest_is_refused_not_an_error(ca, verifier) -> None:
    info = cms.ContentInfo.load(base64.b64decode(ca.issue().sign(CONTENT)))
    for attribute in info["content"]["signer_infos"][0]["signed_attrs"]:
        if attribute["type"].native == "message_digest":
            attribute["values"] = []
    error = rejected(verifier, base64.b64encode(info.dump(force=True)).decode())
    assert error.description == INVALID_SIGNATURE


def test_a_digest_it_does_not_take_is_refused(ca, verifier) -> None:
    error = rejected(verifier, ca.issue().sign(CONTENT, hashes.SHA224()))
    assert error.reason.startswith("unsupported algorithm")


def test_dstu_4145_is_refused_as_unsupported(ca, verifier) -> None:
    """No Python library verifies DSTU 4145: a signature that names it is refused before any
    verification is tried (the OID is put in place of the real one)."""
    info = cms.ContentInfo.load(base64.b64decode(ca.issue().sign(CONTENT)))
    signer_info = info["content"]["signer_infos"][0]
    signer_info["signature_algorithm"] = {"algorithm": "1.2.804.2.1.1.1.1.3.1.1"}
    error = rejected(verifier, base64.b64encode(info.dump(force=True)).decode())
    assert error.description == INVALID_SIGNATURE
    assert error.reason.startswith("unsupported algorithm 1.2.804.2.1.1.1.1.3.1.1")


def test_two_signers_are_refused_as_the_original_words_it(ca, verifier) -> None:
    info = cms.ContentInfo.load(base64.b64decode(ca.issue().sign(CONTENT)))
    signer_infos = info["content"]["signer_infos"]
    info["content"]["signer_infos"] = [signer_infos[0], signer_infos[0]]
    error = rejected(verifier, base64.b64encode(info.dump(force=True)).decode())
    assert error.description == "document must be signed by 1 signer but contains 2 signatures"


@pytest.mark.parametrize(
    ("signed_data", "description"),
    [
        ("not base64!", NOT_BASE64),
        (base64.b64encode(b"not DER").decode(), INVALID_SIGNATURE),
        (encode_unsigned(CONTENT), INVALID_SIGNATURE),  # unsigned content in cms mode
    ],
)
def test_what_is_no_signed_data_is_refused(verifier, signed_data, description) -> None:
    assert rejected(verifier, signed_data).description == description


def test_signed_content_that_is_no_json_object_is_refused(ca, verifier) -> None:
    assert rejected(verifier, ca.issue().sign(b"[1, 2]")).description == NOT_JSON


def test_decode_mode_reads_base64_json_and_names_no_signer() -> None:
    decoder = Base64JsonDecoder()
    signed = decoder.decode(encode_unsigned(CONTENT))
    assert (signed.content, signed.signer) == (CONTENT, None)
    assert rejected(decoder, "%%%").description == NOT_BASE64
    assert rejected(decoder, base64.b64encode(b"{").decode()).description == NOT_JSON
    assert rejected(decoder, base64.b64encode(b"[]").decode()).description == NOT_JSON
