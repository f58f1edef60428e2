"""Exceptions of the Diameter stack, each carrying the Result-Code that answers it."""

from __future__ import annotations


class DiameterError(Exception):
    """A protocol error that has an RFC 6733 Result-Code.

    ``failed_avp`` is the raw bytes of the offending AVP (or a minimal AVP built
    to show what was missing), for the Failed-AVP of the answer.
    """

    def __init__(self, result_code: int, message: str, failed_avp: bytes | None = None) -> None:
        super().__init__(message)
        self.result_code = result_code
        self.failed_avp = failed_avp


class AvpDecodeError(DiameterError):
    """An AVP whose data is not a valid value of its type (5004 or 5014)."""


class MessageFormatError(DiameterError):
    """A frame whose header or AVP layout is broken (3008, 5014, 5015)."""
