"""The crypto recipes: the only place that touches primitives.

Every other module seals, signs, derives and proves through these functions;
none calls AES, ECDH or a hash construction directly. Byte layouts are in each
module's docstring: `envelope` (seal), `stream` (64 KiB packages), `hpke`
(encrypt_to), `merkle` (RFC 6962), `canonical` (what is hashed or signed).
"""

from securecloud.crypto import canonical
from securecloud.crypto.agreement import agree, generate_agreement_key
from securecloud.crypto.envelope import envelope_key_id, new_key, open_sealed, seal
from securecloud.crypto.errors import (
    CryptoError,
    FormatError,
    IntegrityError,
    ProofError,
    SignatureError,
)
from securecloud.crypto.hpke import decrypt_with, encrypt_to
from securecloud.crypto.kdf import derive_key
from securecloud.crypto.mac import mac, verify_mac
from securecloud.crypto.merkle import (
    MerkleTree,
    RangeProof,
    chunked_root,
    leaf_hash,
    leaf_hashes,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)
from securecloud.crypto.signing import (
    fingerprint,
    generate_signing_key,
    load_private_key_pem,
    load_public_key_pem,
    private_key_pem,
    public_key_pem,
    sign,
    verify,
)
from securecloud.crypto.stream import open_bytes, open_stream, seal_bytes, seal_stream

__all__ = [
    "CryptoError",
    "FormatError",
    "IntegrityError",
    "MerkleTree",
    "ProofError",
    "RangeProof",
    "SignatureError",
    "agree",
    "canonical",
    "chunked_root",
    "decrypt_with",
    "derive_key",
    "encrypt_to",
    "envelope_key_id",
    "fingerprint",
    "generate_agreement_key",
    "generate_signing_key",
    "leaf_hash",
    "leaf_hashes",
    "load_private_key_pem",
    "load_public_key_pem",
    "mac",
    "merkle_root",
    "new_key",
    "open_bytes",
    "open_sealed",
    "open_stream",
    "private_key_pem",
    "public_key_pem",
    "seal",
    "seal_bytes",
    "seal_stream",
    "sign",
    "verify",
    "verify_consistency",
    "verify_inclusion",
    "verify_mac",
]
