"""Meter identities on the operator's side: provisioning and the fleet files.

`provision` makes N P-256 meter keys, writes them (with the simulation seed
that decides each consumer) to <data dir>/meters/, and returns the registry
records to register with the platform. Meter ids are 1..N. The private keys
stand for keys burnt into real meters: they live only on the meters' side.

    meters/fleet.json   {"count", "seed", "large_share", "authenticator_key" (hex point)}
    meters/keys.bin     N x (u32 meter id | 32-byte private scalar), 0600
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from securecloud.apps.metering.model import consumer_for
from securecloud.apps.metering.registry import MeterRecord
from securecloud.crypto import suite1
from securecloud.crypto.agreement import public_bytes
from securecloud.runtime.durable import atomic_write


@dataclass(frozen=True)
class Fleet:
    directory: Path
    count: int
    seed: int
    large_share: float
    authenticator_key: bytes

    @classmethod
    def load(cls, directory: Path) -> Fleet:
        path = directory / "fleet.json"
        if not path.exists():
            raise FileNotFoundError(
                f"no fleet in {directory}: run `securecloud meters provision` first"
            )
        doc = json.loads(path.read_text())
        return cls(
            directory,
            doc["count"],
            doc["seed"],
            doc["large_share"],
            bytes.fromhex(doc["authenticator_key"]),
        )

    @property
    def authenticator_public(self) -> ec.EllipticCurvePublicKey:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.authenticator_key)

    def keys(self, meter_ids: range | None = None) -> dict[int, ec.EllipticCurvePrivateKey]:
        data = (self.directory / "keys.bin").read_bytes()
        wanted = meter_ids or range(1, self.count + 1)
        out = {}
        for meter_id in wanted:
            offset = (meter_id - 1) * 36
            stored = int.from_bytes(data[offset : offset + 4], "big")
            if stored != meter_id:
                raise ValueError(f"keys.bin: entry {meter_id} holds meter {stored}")
            out[meter_id] = suite1.meter_key_from_scalar(data[offset + 4 : offset + 36])
        return out


def provision(
    directory: Path, count: int, authenticator_key: bytes, seed: int = 1, large_share: float = 0.02
) -> tuple[Fleet, list[MeterRecord]]:
    if count < 1:
        raise ValueError("count: must be at least 1")
    if not 0.0 <= large_share <= 1.0:
        raise ValueError("large_share: must be between 0 and 1")
    directory.mkdir(parents=True, exist_ok=True)
    blob, records = bytearray(), []
    for meter_id in range(1, count + 1):
        key = suite1.generate_meter_key()
        blob += meter_id.to_bytes(4, "big") + suite1.scalar_of(key)
        consumer = consumer_for(seed, meter_id, large_share)
        records.append(MeterRecord(meter_id, public_bytes(key.public_key()), consumer.meter_class))
    atomic_write(directory / "keys.bin", bytes(blob), mode=0o600)
    doc = {
        "count": count,
        "seed": seed,
        "large_share": large_share,
        "authenticator_key": authenticator_key.hex(),
    }
    atomic_write(directory / "fleet.json", json.dumps(doc).encode(), mode=0o644)
    for stale in directory.glob("state-*.json"):
        os.unlink(stale)  # counters of an older fleet mean nothing for the new keys
    return Fleet(directory, count, seed, large_share, authenticator_key), records
