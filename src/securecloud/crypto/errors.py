"""The one exception hierarchy of the crypto recipes."""


class CryptoError(Exception):
    """Base class: something about keys, formats or authenticity is wrong."""


class FormatError(CryptoError):
    """The bytes are not in the documented format (wrong magic, version or length)."""


class IntegrityError(CryptoError):
    """Authentication failed: the data was altered, truncated, reordered or the key is wrong."""


class SignatureError(IntegrityError):
    """A signature does not verify under the given public key."""


class ProofError(IntegrityError):
    """A Merkle inclusion or consistency proof does not verify."""
