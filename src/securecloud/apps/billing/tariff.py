"""Tariffs as YAML: flat, time of use (like Brazil's tarifa branca), and a demand
charge for supplies above 1 kV. Shipped examples are in `tariffs/`.

    name: tarifa-branca
    kind: flat | time-of-use
    currency: BRL
    utc_offset: "-03:00"           # the windows are local time
    windows:                       # time-of-use only; working days only
      - {name: peak, from: "18:00", to: "21:00"}
    default_window: off-peak       # every other interval, weekends, holidays
    energy_price: {off-peak: "0.62", peak: "1.43"}   # per kWh; flat: {all: ...}
    demand_price: "38.50"          # optional: per kW of the period's highest demand
    holidays: ["2026-01-01", ...]

Prices are decimal strings and all money is computed with `Decimal`, so the
utility and the regulator get the same total to the cent. An interval belongs
to the window its start falls in. A tariff's identity in a bill is its name and
the SHA-256 of its canonical JSON form.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from itertools import pairwise
from pathlib import Path

import numpy as np
import yaml

from securecloud.crypto import canonical

FLAT_WINDOW = "all"
_EPOCH = dt.date(1970, 1, 1)


class TariffError(ValueError):
    """A tariff file that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Window:
    name: str
    start: int  # minutes after local midnight
    end: int


@dataclass(frozen=True)
class Tariff:
    name: str
    kind: str
    currency: str
    utc_offset: dt.timedelta
    windows: tuple[Window, ...]
    default_window: str
    energy_price: dict[str, Decimal]
    demand_price: Decimal | None
    holidays: frozenset[dt.date]
    document: dict  # as parsed, for the digest

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical.encode(self.document)).hexdigest()

    @property
    def reference(self) -> dict:
        return {"name": self.name, "sha256": self.digest}

    @property
    def window_names(self) -> tuple[str, ...]:
        """Every window's name; `windows_of` returns indices into this."""
        if self.kind == "flat":
            return (FLAT_WINDOW,)
        return tuple(sorted({w.name for w in self.windows} | {self.default_window}))

    def windows_of(self, interval_starts: np.ndarray) -> np.ndarray:
        """`window_of` for many interval starts at once: indices into window_names."""
        names = self.window_names
        if self.kind == "flat":
            return np.zeros(len(interval_starts), dtype=np.int64)
        local = interval_starts.astype(np.int64) + int(self.utc_offset.total_seconds())
        day = local // 86400
        holidays = np.array([(d - _EPOCH).days for d in self.holidays], dtype=np.int64)
        off = ((day + 3) % 7 >= 5) | np.isin(day, holidays)  # 1970-01-01 was a Thursday
        minute = (local % 86400) // 60
        out = np.full(len(local), names.index(self.default_window), dtype=np.int64)
        for window in self.windows:
            inside = ~off & (minute >= window.start) & (minute < window.end)
            out[inside] = names.index(window.name)
        return out

    def window_of(self, interval_start: int) -> str:
        """The window of the interval starting at this Unix time."""
        if self.kind == "flat":
            return FLAT_WINDOW
        local = dt.datetime.fromtimestamp(interval_start, dt.UTC) + self.utc_offset
        if local.weekday() >= 5 or local.date() in self.holidays:
            return self.default_window
        minute = local.hour * 60 + local.minute
        for window in self.windows:
            if window.start <= minute < window.end:
                return window.name
        return self.default_window


def _minutes(text: str, field: str) -> int:
    try:
        hours, minutes = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise TariffError(f"{field}: {text!r} is not HH:MM") from None
    if not (0 <= hours <= 24 and 0 <= minutes < 60) or hours * 60 + minutes > 1440:
        raise TariffError(f"{field}: {text!r} is not a time of day")
    return hours * 60 + minutes


def _price(value, field: str) -> Decimal:
    if not isinstance(value, str):
        raise TariffError(f'{field}: give prices as strings ("0.62"), not {value!r}')
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise TariffError(f"{field}: {value!r} is not a decimal number") from None
    if not price.is_finite() or price < 0:
        raise TariffError(f"{field}: {value!r} is not a price")
    return price


def parse(document: dict) -> Tariff:
    if not isinstance(document, dict):
        raise TariffError("tariff: expected a mapping")
    known = {"name", "kind", "currency", "utc_offset", "windows", "default_window"}
    known |= {"energy_price", "demand_price", "holidays"}
    for key in document:
        if key not in known:
            raise TariffError(f"{key}: unknown field")
    for key in ("name", "kind", "currency", "energy_price"):
        if key not in document:
            raise TariffError(f"{key}: missing")
    kind = document["kind"]
    if kind not in ("flat", "time-of-use"):
        raise TariffError(f"kind: {kind!r} is not flat or time-of-use")
    offset_text = str(document.get("utc_offset", "+00:00"))
    sign = -1 if offset_text.startswith("-") else 1
    offset = dt.timedelta(minutes=sign * _minutes(offset_text.lstrip("+-"), "utc_offset"))
    if not isinstance(document["energy_price"], dict):
        raise TariffError("energy_price: expected a mapping of window to price")
    prices = {str(k): _price(v, f"energy_price.{k}") for k, v in document["energy_price"].items()}
    windows: list[Window] = []
    default = str(document.get("default_window", FLAT_WINDOW))
    if kind == "flat":
        if set(prices) != {FLAT_WINDOW}:
            raise TariffError(f"energy_price: a flat tariff has one price, `{FLAT_WINDOW}`")
        if document.get("windows"):
            raise TariffError("windows: a flat tariff has none")
    else:
        for i, item in enumerate(document.get("windows") or []):
            if not isinstance(item, dict) or set(item) != {"name", "from", "to"}:
                raise TariffError(f"windows[{i}]: expected {{name, from, to}}")
            start = _minutes(item["from"], f"windows[{i}].from")
            end = _minutes(item["to"], f"windows[{i}].to")
            if end <= start:
                raise TariffError(f"windows[{i}]: ends before it starts")
            windows.append(Window(str(item["name"]), start, end))
        ordered = sorted(windows, key=lambda w: w.start)
        for a, b in pairwise(ordered):
            if b.start < a.end:
                raise TariffError(f"windows: {a.name} and {b.name} overlap")
        names = {w.name for w in windows} | {default}
        if missing := sorted(names - set(prices)):
            raise TariffError(f"energy_price: no price for {', '.join(missing)}")
    holidays = set()
    for i, text in enumerate(document.get("holidays") or []):
        try:
            holidays.add(dt.date.fromisoformat(str(text)))
        except ValueError:
            raise TariffError(f"holidays[{i}]: {text!r} is not YYYY-MM-DD") from None
    demand = document.get("demand_price")
    return Tariff(
        name=str(document["name"]),
        kind=kind,
        currency=str(document["currency"]),
        utc_offset=offset,
        windows=tuple(windows),
        default_window=default,
        energy_price=prices,
        demand_price=None if demand is None else _price(demand, "demand_price"),
        holidays=frozenset(holidays),
        document=_plain(document),
    )


def _plain(document: dict) -> dict:
    """The parsed YAML as JSON values (dates and times as strings) for the digest."""
    if isinstance(document, dict):
        return {str(k): _plain(v) for k, v in document.items()}
    if isinstance(document, list):
        return [_plain(v) for v in document]
    if isinstance(document, (dt.date, dt.time)):
        return document.isoformat()
    return document


def load(path: Path) -> Tariff:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TariffError(f"tariff: cannot read {path}: {exc}") from exc
    return parse(document)


def builtin(name: str) -> Tariff:
    """One of the shipped tariffs: flat, tarifa-branca, green-a4."""
    text = resources.files(__package__).joinpath("tariffs", f"{name}.yaml").read_text()
    return parse(yaml.safe_load(text))
