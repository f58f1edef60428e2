"""A Diameter stack: codec, dictionary, validation, peer state machine and asyncio node.

Usable alone, as a library, by anyone who only wants a fast Diameter codec.
"""

from charging.diameter.dictionary import DICTIONARY, AvpDef, CommandDef, Dictionary
from charging.diameter.errors import AvpDecodeError, DiameterError, MessageFormatError
from charging.diameter.message import (
    FLAG_ERROR,
    FLAG_PROXIABLE,
    FLAG_REQUEST,
    FLAG_RETRANSMIT,
    Avp,
    AvpGroup,
    Message,
)
from charging.diameter.types import OtherAddress

__all__ = [
    "DICTIONARY",
    "FLAG_ERROR",
    "FLAG_PROXIABLE",
    "FLAG_REQUEST",
    "FLAG_RETRANSMIT",
    "Avp",
    "AvpDecodeError",
    "AvpDef",
    "AvpGroup",
    "CommandDef",
    "DiameterError",
    "Dictionary",
    "Message",
    "MessageFormatError",
    "OtherAddress",
]
