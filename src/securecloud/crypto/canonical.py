"""Canonical JSON: the one byte encoding of anything that is hashed or signed.

Two parties that hold the same value must produce the same bytes, or a
signature made by one will not verify for the other. The rules (a strict
subset of RFC 8785, JCS, chosen so that the standard `json` module parses it):

- UTF-8, no byte-order mark, no whitespace outside strings;
- objects: keys are strings, sorted by Unicode code point, no duplicates;
- numbers: integers only, within the signed 64-bit range; floats are refused
  (encode them as decimal strings) because their text form is not unique;
- strings: the shortest JSON escape (``\\"``, ``\\\\``, ``\\n``-style escapes and
  ``\\u00XX`` for other control characters); every other character literal;
- ``true``, ``false``, ``null``; lists keep their order;
- bytes are refused: encode them as hex or base64 text first.

`decode` accepts only bytes that `encode` would produce, so a signed document
has exactly one accepted encoding.
"""

from __future__ import annotations

import json
from typing import Any

from securecloud.crypto.errors import FormatError

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1


def _check(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise FormatError(f"{path}: integer {value} is outside the signed 64-bit range")
        return
    if isinstance(value, float):
        raise FormatError(f"{path}: floats are not canonical; encode {value!r} as a string")
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FormatError(f"{path}: object key {key!r} is not a string")
            _check(item, f"{path}.{key}")
        return
    raise FormatError(f"{path}: {type(value).__name__} has no canonical JSON form")


def encode(value: Any) -> bytes:
    """Return the canonical JSON bytes of `value` (raises FormatError if it has none)."""
    _check(value, "$")
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in pairs:
        if key in result:
            raise FormatError(f"duplicate object key {key!r}")
        result[key] = item
    return result


def _refuse_float(text: str) -> Any:
    raise FormatError(f"number {text} is not an integer")


def decode(data: bytes) -> Any:
    """Parse canonical JSON; refuse any other encoding of the same value."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_float=_refuse_float,
            parse_constant=_refuse_float,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"not canonical JSON: {exc}") from exc
    if encode(value) != data:
        raise FormatError("JSON is valid but not in canonical form")
    return value
