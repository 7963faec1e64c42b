import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecloud.crypto import (
    IntegrityError,
    SignatureError,
    agree,
    decrypt_with,
    encrypt_to,
    fingerprint,
    generate_agreement_key,
    generate_signing_key,
    load_private_key_pem,
    load_public_key_pem,
    private_key_pem,
    public_key_pem,
    sign,
    verify,
)
from securecloud.crypto.agreement import load_public_bytes, public_bytes
from securecloud.crypto.errors import FormatError


@pytest.mark.parametrize("algorithm", ["ed25519", "p256"])
def test_sign_verify_and_pem_round_trip(algorithm):
    key = generate_signing_key(algorithm)
    signature = sign(key, b"batch root")
    verify(load_public_key_pem(public_key_pem(key.public_key())), b"batch root", signature)
    again = load_private_key_pem(private_key_pem(key))
    assert fingerprint(again.public_key()) == fingerprint(key.public_key())
    with pytest.raises(SignatureError):
        verify(key.public_key(), b"batch roof", signature)
    with pytest.raises(SignatureError):
        verify(generate_signing_key(algorithm).public_key(), b"batch root", signature)


@pytest.mark.parametrize("algorithm", ["x25519", "p256"])
def test_agreement_gives_both_sides_the_same_key_per_purpose(algorithm):
    a, b = generate_agreement_key(algorithm), generate_agreement_key(algorithm)
    peer_b = load_public_bytes(public_bytes(b.public_key()))
    assert agree(a, peer_b, info=b"x") == agree(b, a.public_key(), info=b"x")
    assert agree(a, peer_b, info=b"x") != agree(a, peer_b, info=b"y")


def test_agreement_refuses_mixed_algorithms():
    with pytest.raises(FormatError):
        agree(
            generate_agreement_key("x25519"),
            generate_agreement_key("p256").public_key(),
            info=b"x",
        )


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(["x25519", "p256"]), st.binary(max_size=512), st.binary(max_size=32))
def test_encrypt_to_round_trip(algorithm, plaintext, aad):
    key = generate_agreement_key(algorithm)
    assert decrypt_with(key, encrypt_to(key.public_key(), plaintext, aad), aad) == plaintext


def test_encrypt_to_refuses_other_aad_other_key_and_tampering():
    key = generate_agreement_key()
    blob = encrypt_to(key.public_key(), b"secret config", b"session-hash")
    with pytest.raises(IntegrityError):
        decrypt_with(key, blob, b"other-session")
    with pytest.raises(IntegrityError):
        decrypt_with(generate_agreement_key(), blob, b"session-hash")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(IntegrityError):
        decrypt_with(key, tampered, b"session-hash")
