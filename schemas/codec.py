"""Strict msgpack codec for protocol messages and round states.

Round states and message bodies are frozen dataclasses. They are registered
here under a stable tag and encoded as msgpack extension values, so that a
state written by one process decodes to an equal state in another.

Decoding is strict: an unknown tag, a missing or unknown field, or a value whose
type does not match the field's annotation raises :class:`DecodeError`. A peer's
bytes therefore either become a well-typed object or an error that the caller
turns into blame; they never reach protocol code half-typed.

Integers outside the signed 64-bit range (Paillier values, big exponents) use
their own extension type, because msgpack has no big integers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import msgpack

__all__ = ["DecodeError", "wire", "register_ext", "packb", "unpackb", "MAX_MESSAGE_BYTES"]

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

_EXT_BIGINT = 1
_EXT_STRUCT = 2


class DecodeError(ValueError):
    """Bytes that are not a well-formed, well-typed Conclave value."""


_structs: dict[str, type] = {}
_struct_tags: dict[type, str] = {}
_hints: dict[type, dict[str, Any]] = {}
_ext_by_type: dict[type, tuple[int, Callable[[Any], bytes]]] = {}
_ext_by_code: dict[int, tuple[type, Callable[[bytes], Any]]] = {}


def wire(tag: str) -> Callable[[type], type]:
    """Class decorator: register a frozen dataclass under a stable wire tag."""

    def register(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} is not a dataclass")
        if tag in _structs and _structs[tag] is not cls:
            raise ValueError(f"wire tag {tag!r} registered twice")
        _structs[tag] = cls
        _struct_tags[cls] = tag
        return cls

    return register


def register_ext(cls: type, code: int, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]) -> None:
    """Register a value type (such as a curve point) as its own extension code."""
    if code in (_EXT_BIGINT, _EXT_STRUCT):
        raise ValueError("extension code reserved")
    _ext_by_type[cls] = (code, encode)
    _ext_by_code[code] = (cls, decode)


_I64_MIN = -(1 << 63)
_U64_MAX = (1 << 64) - 1


def _encode_bigint(v: int) -> bytes:
    sign = b"\x01" if v < 0 else b"\x00"
    mag = abs(v)
    return sign + mag.to_bytes((mag.bit_length() + 7) // 8, "big")


def _decode_bigint(data: bytes) -> int:
    if not data or data[0] not in (0, 1):
        raise DecodeError("malformed big integer")
    mag = int.from_bytes(data[1:], "big")
    return -mag if data[0] == 1 else mag


def _prepare(obj: Any) -> Any:
    if obj is None or isinstance(obj, (bool, str, bytes, float)):
        return obj
    if isinstance(obj, int):
        if _I64_MIN <= obj <= _U64_MAX:
            return int(obj)
        return msgpack.ExtType(_EXT_BIGINT, _encode_bigint(int(obj)))
    if type(obj).__name__ == "mpz":
        return _prepare(int(obj))
    if isinstance(obj, (list, tuple)):
        return [_prepare(v) for v in obj]
    if isinstance(obj, dict):
        return {_prepare(k): _prepare(v) for k, v in obj.items()}
    ext = _ext_by_type.get(type(obj))
    if ext is not None:
        return msgpack.ExtType(ext[0], ext[1](obj))
    tag = _struct_tags.get(type(obj))
    if tag is not None:
        fields = [_prepare(getattr(obj, f.name)) for f in dataclasses.fields(obj)]
        return msgpack.ExtType(_EXT_STRUCT, msgpack.packb([tag, fields], use_bin_type=True))
    raise TypeError(f"cannot encode value of type {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    """Encode a registered value (or plain msgpack data) to bytes."""
    return msgpack.packb(_prepare(obj), use_bin_type=True)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_BIGINT:
        return _decode_bigint(data)
    if code == _EXT_STRUCT:
        try:
            tag, values = msgpack.unpackb(
                data, ext_hook=_ext_hook, raw=False, use_list=False, strict_map_key=False
            )
        except DecodeError:
            raise
        except Exception as exc:  # msgpack raises a zoo of types
            raise DecodeError("malformed structure") from exc
        cls = _structs.get(tag) if isinstance(tag, str) else None
        if cls is None:
            raise DecodeError(f"unknown structure tag {tag!r}"[:120])
        fields = dataclasses.fields(cls)
        if not isinstance(values, tuple) or len(values) != len(fields):
            raise DecodeError(f"{tag}: expected {len(fields)} fields")
        hints = _type_hints(cls)
        kwargs = {}
        for f, v in zip(fields, values):
            _check_type(v, hints[f.name], f"{tag}.{f.name}")
            kwargs[f.name] = v
        try:
            return cls(**kwargs)
        except DecodeError:
            raise
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"{tag}: invalid value") from exc
    entry = _ext_by_code.get(code)
    if entry is None:
        raise DecodeError(f"unknown extension code {code}")
    try:
        return entry[1](data)
    except DecodeError:
        raise
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"invalid {entry[0].__name__}") from exc


def unpackb(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode bytes produced by :func:`packb`; raise :class:`DecodeError` on anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("expected bytes")
    if len(data) > max_bytes:
        raise DecodeError(f"message of {len(data)} bytes exceeds limit {max_bytes}")
    try:
        return msgpack.unpackb(
            data, ext_hook=_ext_hook, raw=False, use_list=False, strict_map_key=False
        )
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError("malformed msgpack") from exc


def _type_hints(cls: type) -> dict[str, Any]:
    hints = _hints.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _hints[cls] = hints
    return hints


def _check_type(value: Any, hint: Any, where: str) -> None:
    """Check a decoded value against a (simple) annotation."""
    if hint is Any:
        return
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for alt in args:
            try:
                _check_type(value, alt, where)
                return
            except DecodeError:
                continue
        raise DecodeError(f"{where}: unexpected type {type(value).__name__}")
    if hint is type(None):
        if value is not None:
            raise DecodeError(f"{where}: expected nothing")
        return
    if origin is tuple:
        if not isinstance(value, tuple):
            raise DecodeError(f"{where}: expected a sequence")
        if len(args) == 2 and args[1] is Ellipsis:
            for i, v in enumerate(value):
                _check_type(v, args[0], f"{where}[{i}]")
        else:
            if len(value) != len(args):
                raise DecodeError(f"{where}: expected {len(args)} items")
            for i, (v, a) in enumerate(zip(value, args)):
                _check_type(v, a, f"{where}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise DecodeError(f"{where}: expected a mapping")
        for k, v in value.items():
            _check_type(k, args[0], f"{where} key")
            _check_type(v, args[1], f"{where}[{k!r}]"[:120])
        return
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise DecodeError(f"{where}: expected an integer")
        return
    if hint is bytes:
        if not isinstance(value, bytes):
            raise DecodeError(f"{where}: expected bytes")
        return
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise DecodeError(f"{where}: expected {hint.__name__}")
        return
    raise TypeError(f"{where}: unsupported annotation {hint!r}")
