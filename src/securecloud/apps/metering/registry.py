"""The meter registry: which meters exist, their public keys, supply class and status.

Held by the platform in the KVS (bucket `metering`, key `registry/meters.json`),
written by `securecloud meters provision` and read by every authenticator. A
revoked meter's frames are refused. The registry holds public data only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

from cryptography.hazmat.primitives.asymmetric import ec

from securecloud.apps.metering.reading import METER_CLASSES, MeterClass

BUCKET = "metering"
KEY = "registry/meters.json"


@dataclass(frozen=True)
class MeterRecord:
    meter_id: int
    public_key: bytes  # uncompressed P-256 point, 65 bytes
    meter_class: str
    revoked: bool = False

    @cached_property
    def verify_key(self) -> ec.EllipticCurvePublicKey:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.public_key)

    @property
    def supply(self) -> MeterClass:
        return METER_CLASSES[self.meter_class]


class Registry:
    def __init__(self, records: dict[int, MeterRecord] | None = None):
        self.records = records or {}

    def get(self, meter_id: int) -> MeterRecord | None:
        return self.records.get(meter_id)

    def add(self, record: MeterRecord) -> None:
        self.records[record.meter_id] = record

    def revoke(self, meter_id: int) -> None:
        old = self.records[meter_id]
        self.records[meter_id] = MeterRecord(old.meter_id, old.public_key, old.meter_class, True)

    def __len__(self) -> int:
        return len(self.records)

    def to_json(self) -> bytes:
        meters = {
            str(r.meter_id): {
                "key": r.public_key.hex(),
                "class": r.meter_class,
                "revoked": r.revoked,
            }
            for r in self.records.values()
        }
        return json.dumps({"version": 1, "meters": meters}, separators=(",", ":")).encode()

    @classmethod
    def load(cls, storage) -> Registry:
        """The registry held in the KVS; empty when no meter was provisioned yet."""
        try:
            return cls.from_json(storage.get(BUCKET, KEY))
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
            return cls()

    @classmethod
    def from_json(cls, data: bytes) -> Registry:
        doc = json.loads(data)
        return cls(
            {
                int(k): MeterRecord(int(k), bytes.fromhex(v["key"]), v["class"], v["revoked"])
                for k, v in doc["meters"].items()
            }
        )
