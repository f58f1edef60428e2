"""Diameter framing over a byte stream: splits TCP data into whole messages.

The length in the header is the only frame delimiter, so a header whose version
or length is wrong leaves no way to find the next message: the framer reports it
once and the connection must be closed after the error answer (RFC 6733 7.1.5,
DIAMETER_UNSUPPORTED_VERSION / DIAMETER_INVALID_MESSAGE_LENGTH).
"""

from __future__ import annotations

from charging.diameter.errors import MessageFormatError
from charging.diameter.message import HEADER_LENGTH

DEFAULT_MAX_MESSAGE = 1 << 20


class FramingError(MessageFormatError):
    """The stream cannot be framed any further; ``header`` holds the offending 20 octets if known."""

    def __init__(self, result_code: int, message: str, header: bytes) -> None:
        super().__init__(result_code, message)
        self.header = header


class Framer:
    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message
        self._broken = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received octets; return every message now complete, in order."""
        if self._broken:
            return []
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        offset = 0
        available = len(buf)
        while available - offset >= 4:
            version = buf[offset]
            length = (buf[offset + 1] << 16) | (buf[offset + 2] << 8) | buf[offset + 3]
            if version != 1 or length < HEADER_LENGTH or length & 3 or length > self._max:
                self._broken = True
                header = bytes(buf[offset : offset + HEADER_LENGTH])
                del buf[:]
                if version != 1:
                    raise FramingError(5011, f"unsupported Diameter version {version}", header)
                raise FramingError(5015, f"invalid message length {length}", header)
            if available - offset < length:
                break
            frames.append(bytes(buf[offset : offset + length]))
            offset += length
        if offset:
            del buf[:offset]
        return frames
