"""Erasure coders: K data shares plus M parity shares, any K recover the data.

Both backends are systematic (shares 0..K-1 are the data itself, so a read
that finds them does no decoding). `zfec` is the default: on this machine it
encodes 6-of-9 at 662 MB/s against 513 MB/s for pyeclib's ISA-L backend
(bench/kvs.py measures both).
"""

from __future__ import annotations

from typing import Protocol


class ErasureCoder(Protocol):
    name: str

    def encode(self, data: bytes, k: int, m: int) -> list[bytes]: ...

    def decode(self, shares: dict[int, bytes], k: int, m: int, length: int) -> bytes: ...


def _split(data: bytes, k: int) -> list[bytes]:
    size = max(1, -(-len(data) // k))
    padded = data.ljust(size * k, b"\x00")
    return [padded[i * size : (i + 1) * size] for i in range(k)]


def _join(blocks, length: int) -> bytes:
    """The first `length` bytes of the blocks end to end, copied once (shares can be
    memoryviews of the fragments they came in)."""
    out, need = [], length
    for block in blocks:
        piece = memoryview(block)[:need]
        out.append(piece)
        need -= len(piece)
    return b"".join(out)


class ZfecCoder:
    name = "zfec"

    def encode(self, data: bytes, k: int, m: int) -> list[bytes]:
        import zfec

        blocks = _split(data, k)
        return list(zfec.Encoder(k, k + m).encode(blocks))

    def decode(self, shares: dict[int, bytes], k: int, m: int, length: int) -> bytes:
        if all(i in shares for i in range(k)):
            return _join([shares[i] for i in range(k)], length)
        import zfec

        chosen = sorted(shares)[:k]
        blocks = zfec.Decoder(k, k + m).decode([bytes(shares[i]) for i in chosen], chosen)
        return _join(blocks, length)


class PyeclibCoder:
    name = "pyeclib"

    def __init__(self, backend: str = "isa_l_rs_vand"):
        self.backend = backend
        self._drivers: dict[tuple[int, int], object] = {}

    def _driver(self, k: int, m: int):
        from pyeclib.ec_iface import ECDriver

        driver = self._drivers.get((k, m))
        if driver is None:
            driver = self._drivers[(k, m)] = ECDriver(k=k, m=m, ec_type=self.backend)
        return driver

    def encode(self, data: bytes, k: int, m: int) -> list[bytes]:
        return list(self._driver(k, m).encode(data))

    def decode(self, shares: dict[int, bytes], k: int, m: int, length: int) -> bytes:
        chosen = [bytes(shares[i]) for i in sorted(shares)[:k]]
        return bytes(self._driver(k, m).decode(chosen))[:length]


CODERS = {"zfec": ZfecCoder, "pyeclib": PyeclibCoder}
