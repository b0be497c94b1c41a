"""
AMQP field tables with every value type RabbitMQ uses.

txamqp's L{Codec} knows only the table value types C{S}, C{I}, C{F} and
C{t}, and fails on anything else.  RabbitMQ itself sends more: every
dead-lettered message carries an C{x-death} header, an array of tables
holding 64-bit integers, timestamps and arrays.  L{FieldTableCodec} reads
and writes all of them, with the type letters of RabbitMQ's AMQP 0-9-1
errata (which differ from the 0-9-1 spec's own table for some types).

Decoded values
==============

    - C{t} boolean: C{bool}
    - C{b}, C{B}, C{s}, C{u}, C{I}, C{i}, C{l} (signed and unsigned 8, 16,
      32 and signed 64-bit integers): C{int}
    - C{f}, C{d} (32 and 64-bit floats): C{float}
    - C{D} decimal: L{decimal.Decimal}
    - C{S} long string: C{str} when it is valid UTF-8, else C{bytes} (as
      txamqp decodes every string, so existing callers see no change)
    - C{x} byte array: C{bytes}
    - C{T} timestamp (seconds since the epoch): an aware UTC
      L{datetime.datetime}; a timestamp beyond C{datetime}'s range (year
      9999) stays an C{int} rather than failing the whole frame
    - C{A} array: C{list}
    - C{F} table: C{dict}
    - C{V} void: C{None}

Encoded values
==============

    - C{None}: C{V}; C{bool}: C{t}
    - C{int}: C{I} when it fits 32 bits signed, else C{l} (64 bits signed)
    - C{float}: C{d}
    - L{decimal.Decimal}: C{D} (up to 255 decimal places, unscaled value
      fitting 32 bits signed)
    - C{str}: C{S} as UTF-8
    - C{bytes}: C{S} too, like RabbitMQ's own clients: C{S} is part of the
      0-9-1 spec, C{x} only of RabbitMQ's dialect.  Such bytes come back as
      C{str} when they are valid UTF-8.
    - aware L{datetime.datetime}: C{T}, in whole seconds (fractions are
      dropped); a naive one is refused rather than guessed at
    - C{list}, C{tuple}: C{A}; any C{Mapping} with C{str} keys: C{F}

Anything else raises L{FieldTableError} naming where in the table it is.

L{FieldTableCodec} replaces txamqp's C{Codec.enc_str}, C{encode_shortstr},
C{encode_table} and C{decode_table}, extends C{read}, and relies on its
C{dec_str} returning C{bytes} for a string that is not UTF-8 (txamqp 0.8.1
and later): C{tests/test_txamqp_contract.py} checks them against the
installed txamqp.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from collections.abc import Callable, Mapping
from io import BytesIO
from typing import Any

from txamqp.codec import EOF, Codec

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_ONE_SECOND = datetime.timedelta(seconds=1)

#: the Python types L{FieldTableCodec} can encode, for error messages
_ENCODABLE = (
    "None, bool, int (-2**63..2**63-1), float, Decimal, str, bytes, aware "
    "datetime, list/tuple or dict with str keys"
)


class FieldTableError(ValueError):
    """
    A field table (or array) cannot be encoded, or bytes received as one are
    not a valid table.
    """


# (txamqp has no type hints: mypy sees Codec as Any, and --strict refuses
# Any as a base class)
class FieldTableCodec(Codec):  # type: ignore[misc]
    """
    txamqp's codec with field tables and arrays of every value type
    RabbitMQ uses, and string lengths counted in encoded bytes.
    """

    def read(self, n: int) -> bytes:
        # txamqp's read returns what there is when fewer than n bytes are
        # left; a table must never silently take a truncated value
        data: bytes = super().read(n)
        if len(data) != n:
            raise EOF(f"wanted {n} bytes, only {len(data)} left")
        return data

    def enc_str(self, fmt: str, s: str | bytes) -> None:
        # txamqp packs len() of the str, which is wrong for non-ASCII text
        data = s.encode("utf-8") if isinstance(s, str) else bytes(s)
        self.enc_bytes(fmt, data)

    def encode_shortstr(self, s: str | bytes) -> None:
        data = s.encode("utf-8") if isinstance(s, str) else bytes(s)
        if len(data) > 255:
            raise FieldTableError(
                f"short string {s[:40]!r}... is {len(data)} bytes long: AMQP "
                f"allows at most 255 (table keys, queue and exchange names, "
                f"most message properties); shorten it"
            )
        self.enc_bytes("!B", data)

    # -- tables ------------------------------------------------------------

    def encode_table(self, tbl: Mapping[str, Any]) -> None:
        self._encodeTable(tbl, "")

    def decode_table(self) -> dict[str | bytes, Any]:
        inner, size = self._innerCodec("table")
        result: dict[str | bytes, Any] = {}
        try:
            while inner.nread < size:
                key = inner.decode_shortstr()
                result[key] = inner._decodeValue()
        except EOF as e:
            raise FieldTableError(f"a field table ends inside a key or value ({e})") from None
        return result

    def decodeArray(self) -> list[Any]:
        """
        Read a field array (C{A}): its size in bytes, then values each with
        its type letter.
        """
        inner, size = self._innerCodec("array")
        result = []
        try:
            while inner.nread < size:
                result.append(inner._decodeValue())
        except EOF as e:
            raise FieldTableError(f"a field array ends inside a value ({e})") from None
        return result

    def _innerCodec(self, what: str) -> tuple[FieldTableCodec, int]:
        # decoding a table or array from its own buffer keeps a bad size
        # inside it from desynchronising whatever follows it
        try:
            data = self.decode_longbytes()
        except EOF as e:
            raise FieldTableError(f"a field {what} is longer than what contains it ({e})") from None
        return type(self)(BytesIO(data)), len(data)

    def _decodeValue(self) -> Any:
        typeLetter = self.read(1)
        decoder = _DECODERS.get(typeLetter)
        if decoder is None:
            raise FieldTableError(
                f"unknown field value type {typeLetter!r}: not one of RabbitMQ's "
                f"AMQP 0-9-1 types {b''.join(sorted(_DECODERS)).decode()}"
            )
        return decoder(self)

    def _encodeTable(self, tbl: Mapping[str, Any], path: str) -> None:
        buf = BytesIO()
        inner = type(self)(buf)
        for key, value in tbl.items():
            if not isinstance(key, str):
                raise FieldTableError(
                    f"field table key {key!r} at {path or 'top level'} is a "
                    f"{type(key).__name__}: table keys must be str"
                )
            inner.encode_shortstr(key)
            inner._encodeValue(value, f"{path}[{key!r}]")
        self.encode_longbytes(buf.getvalue())

    def _encodeArray(self, values: list[object] | tuple[object, ...], path: str) -> None:
        buf = BytesIO()
        inner = type(self)(buf)
        for index, value in enumerate(values):
            inner._encodeValue(value, f"{path}[{index}]")
        self.encode_longbytes(buf.getvalue())

    def _encodeValue(self, value: object, path: str) -> None:
        # bool before int: bool is an int subclass
        if value is None:
            self.write(b"V")
        elif isinstance(value, bool):
            self.pack("!cB", b"t", int(value))
        elif isinstance(value, int):
            if -(2**31) <= value < 2**31:
                self.pack("!ci", b"I", value)
            elif -(2**63) <= value < 2**63:
                self.pack("!cq", b"l", value)
            else:
                raise self._refuse(value, path, "it does not fit 64 bits signed")
        elif isinstance(value, float):
            self.pack("!cd", b"d", value)
        elif isinstance(value, decimal.Decimal):
            scale, unscaled = self._decimalParts(value, path)
            self.pack("!cBi", b"D", scale, unscaled)
        elif isinstance(value, (str, bytes)):
            self.write(b"S")
            self.enc_str("!L", value)
        elif isinstance(value, datetime.datetime):
            self.pack("!cQ", b"T", self._timestampOf(value, path))
        elif isinstance(value, (list, tuple)):
            self.write(b"A")
            self._encodeArray(value, path)
        elif isinstance(value, Mapping):
            self.write(b"F")
            self._encodeTable(value, path)
        else:
            raise self._refuse(value, path, f"a {type(value).__name__} has no AMQP field type")

    @staticmethod
    def _refuse(value: object, path: str, why: str) -> FieldTableError:
        return FieldTableError(
            f"field table value {value!r} at {path or 'top level'} cannot be "
            f"encoded: {why}; use {_ENCODABLE}"
        )

    def _decimalParts(self, value: decimal.Decimal, path: str) -> tuple[int, int]:
        if not value.is_finite():
            raise self._refuse(value, path, "AMQP decimals are finite")
        sign, digits, exponent = value.as_tuple()
        assert isinstance(exponent, int)
        unscaled = int("".join(map(str, digits))) * (-1 if sign else 1)
        if exponent > 0:
            unscaled, scale = unscaled * 10**exponent, 0
        else:
            scale = -exponent
        if scale > 255 or not -(2**31) <= unscaled < 2**31:
            raise self._refuse(
                value, path,
                "an AMQP decimal has at most 255 decimal places and 32 bits signed of digits",
            )
        return scale, unscaled

    def _timestampOf(self, value: datetime.datetime, path: str) -> int:
        if value.utcoffset() is None:
            raise self._refuse(
                value, path, "a naive datetime has no defined instant: give it a tzinfo"
            )
        seconds = (value - _EPOCH) // _ONE_SECOND
        if not 0 <= seconds < 2**64:
            raise self._refuse(value, path, "AMQP timestamps start at 1970-01-01 UTC")
        return seconds


def _unpacker(fmt: str) -> Callable[[FieldTableCodec], Any]:
    size = struct.calcsize(fmt)

    def decode(codec: FieldTableCodec) -> Any:
        (value,) = struct.unpack(fmt, codec.read(size))
        return value

    return decode


def _decodeDecimal(codec: FieldTableCodec) -> decimal.Decimal:
    scale, unscaled = struct.unpack("!Bi", codec.read(5))
    return decimal.Decimal(unscaled).scaleb(-scale)


def _decodeTimestamp(codec: FieldTableCodec) -> datetime.datetime | int:
    seconds: int
    (seconds,) = struct.unpack("!Q", codec.read(8))
    try:
        return _EPOCH + datetime.timedelta(seconds=seconds)
    except OverflowError:
        return seconds


_DECODERS: dict[bytes, Callable[[FieldTableCodec], Any]] = {
    b"t": lambda codec: codec.read(1) != b"\x00",
    b"b": _unpacker("!b"),
    b"B": _unpacker("!B"),
    b"s": _unpacker("!h"),
    b"u": _unpacker("!H"),
    b"I": _unpacker("!i"),
    b"i": _unpacker("!I"),
    b"l": _unpacker("!q"),
    b"f": _unpacker("!f"),
    b"d": _unpacker("!d"),
    b"D": _decodeDecimal,
    b"S": FieldTableCodec.decode_longstr,
    b"x": FieldTableCodec.decode_longbytes,
    b"T": _decodeTimestamp,
    b"A": FieldTableCodec.decodeArray,
    b"F": FieldTableCodec.decode_table,
    b"V": lambda codec: None,
}


def checkFieldTable(table: Mapping[str, Any]) -> None:
    """
    Check that C{table} can be sent as an AMQP field table (message
    headers, queue arguments), before it reaches a frame writer where an
    error would break the connection.

    @raise FieldTableError: naming the value that cannot be encoded.
    """
    FieldTableCodec(BytesIO()).encode_table(table)
