"""What the store accepts and how it is stored: the limits, the key and value checks, and the
encoding of a value into a row (and back) that gives back exactly what was put.

What cannot come back exactly (a lone surrogate, a key or value over its limit, a mapping
that JSON would change) is refused here, with `TypeError` or `ValueError`, in the caller and
before the write joins a transaction.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "SQLITE_MAX_LENGTH",
    "Row",
    "Value",
    "check_key",
    "decode",
    "encode",
]

#: What a key maps to: a JSON object, text, bytes or nothing.
Value: TypeAlias = Mapping[str, Any] | str | bytes | None

#: Default limit on a key: its UTF-8 encoding, in bytes (1024 ASCII characters, at least 256
#: of any script). Keys are identities, kept in the primary-key index.
MAX_KEY_BYTES: Final = 1024
#: Default limit on a value: text as UTF-8, bytes as they are, a mapping as its compact JSON.
MAX_VALUE_BYTES: Final = 1 << 20

# SQLite's own ceiling on a string or blob (SQLITE_MAX_LENGTH as shipped): a limit above it
# could accept a write that SQLite then refuses.
SQLITE_MAX_LENGTH: Final = 1_000_000_000

#: A stored row: the key, the kind of value, and the value as SQLite keeps it.
Row: TypeAlias = tuple[str, int, str | bytes | None]

_KIND_NULL, _KIND_TEXT, _KIND_BYTES, _KIND_JSON = 0, 1, 2, 3

# Compact, UTF-8 as is (its size is the stored size), no NaN or infinity (not JSON). Built
# once: json.dumps with options builds a new encoder on every call.
_JSON: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# The same encoding, straight from the C encoder: JSONEncoder.encode builds one on every call
# (more than half of the time it takes for a small object). Without a table of the objects
# being encoded it keeps no state between calls, so one serves every thread; a circular
# value then ends in RecursionError, and `_to_json` asks `_JSON` again for the exact error.
_FAST_JSON: Final = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,
        _JSON.default,
        json.encoder.encode_basestring,
        None,
        _JSON.key_separator,
        _JSON.item_separator,
        _JSON.sort_keys,
        _JSON.skipkeys,
        _JSON.allow_nan,
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)
# What is stored as bytes (a tuple: isinstance checks one faster than a union).
_BYTES: Final = (bytes, bytearray, memoryview)
# Types that JSON gives back as they were (exact types: a subclass may encode differently).
_PLAIN_JSON: Final = frozenset({str, int, float, bool, type(None)})


def _utf8_size(text: str, what: str) -> int:
    """Bytes of ``text`` in UTF-8; a lone surrogate cannot be stored and is refused."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} contains a lone surrogate ({text[exc.start]!r} at index {exc.start}): "
            "not valid Unicode text, so it cannot be stored as UTF-8"
        ) from None


def check_key(key: object, limit: int | None) -> str:
    """``key`` if it can be stored (within ``limit`` bytes, if any), else `TypeError` or
    `ValueError`."""
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    size = _utf8_size(key, "key")
    if limit is not None and size > limit:
        raise ValueError(f"key is {size} bytes in UTF-8, over the limit of {limit} bytes")
    return key


def encode(key: object, value: object, *, max_key: int, max_value: int) -> Row:
    """The row for ``key`` and ``value``, or an error if they cannot come back exactly."""
    # Runs on the event loop for every put: an ASCII key within the limit needs no more checks.
    if type(key) is not str or not key.isascii() or len(key) > max_key:
        key = check_key(key, max_key)
    kind: int
    raw: str | bytes | None
    if value is None:
        return (key, _KIND_NULL, None)
    # A dict first, by its exact type: the check against the Mapping ABC is the slow one.
    if type(value) is dict:
        kind, raw = _KIND_JSON, _to_json(value)
        size = _utf8_size(raw, "value")
    elif isinstance(value, str):
        kind, raw, size = _KIND_TEXT, str(value), _utf8_size(value, "text value")
    elif isinstance(value, _BYTES):
        raw = bytes(value)
        kind, size = _KIND_BYTES, len(raw)
    elif isinstance(value, Mapping):
        kind, raw = _KIND_JSON, _to_json(value)
        size = _utf8_size(raw, "value")
    else:
        raise TypeError(f"value must be a Mapping, str, bytes or None, not {type(value).__name__}")
    if size > max_value:
        raise ValueError(f"value is {size} bytes, over the limit of {max_value} bytes")
    return (key, kind, raw)


def _to_json(value: Mapping[Any, Any]) -> str:
    # A plain dict is encoded as it is; any other mapping as a dict of its items.
    obj: dict[Any, Any] = value if type(value) is dict else dict(value)
    try:
        text = _encode_json(obj)
    except RecursionError:
        raise ValueError("value is nested too deeply to be stored as JSON") from None
    except ValueError as exc:  # NaN or infinity, which JSON does not have
        raise ValueError(f"value cannot be stored as JSON: {exc}") from None
    except TypeError as exc:  # a set, an object, a key of an odd type
        raise TypeError(f"value cannot be stored as JSON: {exc}") from None
    # json.dumps turns non-str keys into strings and tuples into lists without a word; such a
    # value would come back different from what was put. A flat object of plain values (the
    # common case) cannot change; anything else is decoded again and compared.
    if not _flat_and_plain(obj):
        try:
            changed = json.loads(text) != obj
        except RecursionError:  # encoding had room on the stack; decoding and comparing not
            raise ValueError("value is nested too deeply to be stored as JSON") from None
        if changed:
            raise TypeError(f"value would not come back unchanged from JSON: {_json_change(obj)}")
    return text


def _encode_json(obj: dict[Any, Any]) -> str:
    """``_JSON.encode(obj)``, faster."""
    if _FAST_JSON is None:
        return _JSON.encode(obj)
    try:
        return "".join(_FAST_JSON(obj, 0))
    except RecursionError:
        # Nested too deeply, or circular: _JSON, which looks for cycles, says which.
        return _JSON.encode(obj)


def _flat_and_plain(obj: dict[Any, Any]) -> bool:
    for key, item in obj.items():
        if type(key) is not str or type(item) not in _PLAIN_JSON:
            return False
    return True


def _json_change(value: object, where: str = "value") -> str:
    """Why ``value`` changes on its way through JSON (only called once it is known to)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"key {key!r} in {where} is not a str"
            found = _json_change(item, f"{where}[{key!r}]")
            if found:
                return found
    elif isinstance(value, tuple):
        return f"{where} is a tuple (JSON has only lists)"
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _json_change(item, f"{where}[{i}]")
            if found:
                return found
    return ""


def decode(kind: int, raw: str | bytes | None) -> Value:
    """The value a row holds (the inverse of `encode`)."""
    if kind == _KIND_JSON:
        loaded: dict[str, Any] = json.loads(raw if raw is not None else "null")
        return loaded
    if kind == _KIND_BYTES:
        return raw if isinstance(raw, bytes) else b""
    return raw
