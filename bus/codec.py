"""Decoding what arrives from the wire, one way everywhere: a msgspec decoder, and a refusal
that names what did not decode and why, never a traceback and never a partial value. Every
layer decodes untrusted bytes through here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

Decoder = msgspec.json.Decoder[T] | msgspec.msgpack.Decoder[T]


def decode_or_refuse(
    decoder: Decoder[T], data: bytes, refusal: Callable[[str], Exception], what: str
) -> T:
    """`data` decoded, or `refusal("<what>: <why>")` raised (a shape that does not fit the
    type is a `ValidationError`, itself a `DecodeError`)."""
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise refusal(f"{what}: {exc}") from None
    except RecursionError:  # msgspec recurses even into values it skips
        raise refusal(f"{what}: values nested too deeply") from None


def decode_or_none(decoder: Decoder[T], data: bytes) -> T | None:
    """`data` decoded, or None when it does not (the caller skips it, or logs it)."""
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None


__all__: list[Any] = ["decode_or_none", "decode_or_refuse"]
