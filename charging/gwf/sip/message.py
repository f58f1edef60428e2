"""SIP messages (RFC 3261 section 7, grammar of section 25): parsing and serialising, no I/O.

A message is a start line, an ordered list of header fields and a body.  Header names are kept in their
canonical long form whatever form arrived (compact ``v:`` becomes ``Via``).  The comma-separated list
headers that routing rewrites (Via, Route, Record-Route, Contact) are split into one field per value on
parsing, which RFC 3261 7.3.1 makes equivalent, so that pushing or popping the top value is a list
operation.  Serialising always writes a Content-Length that matches the body.

The typed views (``Uri``, ``NameAddr``, ``Via``, ``CSeq``) are parsed on demand from the header text and
serialised back with ``str()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

SIP_VERSION = "SIP/2.0"
BRANCH_COOKIE = "z9hG4bK"  # RFC 3261 8.1.1.7: branches of RFC 3261 elements start with this

# RFC 3261 7.3.3 and the registry of compact forms.
COMPACT = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "Identity",
        "Identity-Info",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "MIME-Version",
        "Organization",
        "P-Access-Network-Info",
        "P-Asserted-Identity",
        "P-Called-Party-ID",
        "P-Charging-Function-Addresses",
        "P-Charging-Vector",
        "P-Preferred-Identity",
        "P-Served-User",
        "Path",
        "Priority",
        "Privacy",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reject-Contact",
        "Reply-To",
        "Request-Disposition",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Service-Route",
        "Session-Expires",
        "Subject",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    )
}

# Headers whose comma-separated values are split into one field each on parsing (RFC 3261 7.3.1).
SPLIT_HEADERS = frozenset({"Via", "Route", "Record-Route", "Contact", "Path", "Service-Route"})

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024

REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    400: "Bad Request",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
}


class SipParseError(ValueError):
    """Bytes that are not a SIP message this parser accepts; ``status`` is the response that fits (400)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def canonical_name(name: str) -> str:
    name = name.strip()
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT:
        return COMPACT[lower]
    return _CANONICAL.get(lower, name)


# -- lexical helpers ----------------------------------------------------------------------------------


def split_outside(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is outside quoted strings and angle brackets."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def parse_params(text: str) -> dict[str, str | None]:
    """``;a=1;b;c="x"`` (leading separator optional) into an ordered dict; names are lower-cased."""
    params: dict[str, str | None] = {}
    for part in split_outside(text, ";"):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            name, value = part.split("=", 1)
            params[name.strip().lower()] = value.strip()
        else:
            params[part.lower()] = None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        out = []
        i = 0
        while i < len(inner):
            if inner[i] == "\\" and i + 1 < len(inner):
                i += 1
            out.append(inner[i])
            i += 1
        return "".join(out)
    return value


def _split_hostport(text: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("["):  # IPv6 reference
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {text!r}")
        host = text[: end + 1]
        rest = text[end + 1 :]
        if rest.startswith(":"):
            return host, _port(rest[1:])
        if rest:
            raise SipParseError(f"bad host {text!r}")
        return host, None
    if ":" in text:
        host, port = text.rsplit(":", 1)
        return host, _port(port)
    return text, None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise SipParseError(f"bad port {text!r}")
    return int(text)


def _hostport(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


# -- URIs ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Uri:
    """A SIP, SIPS or tel URI (RFC 3261 19.1, RFC 3966); other schemes keep their text in ``opaque``."""

    scheme: str
    user: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""
    opaque: str = ""

    @classmethod
    def parse(cls, text: str) -> Uri:
        text = text.strip()
        if ":" not in text:
            raise SipParseError(f"not a URI: {text!r}")
        scheme, rest = text.split(":", 1)
        scheme = scheme.lower()
        if scheme in ("sip", "sips"):
            headers = ""
            if "?" in rest:
                rest, headers = rest.split("?", 1)
            user: str | None = None
            if "@" in rest:
                user, rest = rest.rsplit("@", 1)
            hostport, _, params = rest.partition(";")
            host, port = _split_hostport(hostport)
            if not host:
                raise SipParseError(f"URI without a host: {text!r}")
            return cls(scheme, user, host.lower(), port, parse_params(params), headers)
        if scheme == "tel":
            number, _, params = rest.partition(";")
            return cls(scheme, number, "", None, parse_params(params))
        return cls(scheme, opaque=rest)

    def __str__(self) -> str:
        if self.scheme in ("sip", "sips"):
            user = f"{self.user}@" if self.user is not None else ""
            text = f"{self.scheme}:{user}{_hostport(self.host, self.port)}{format_params(self.params)}"
            return f"{text}?{self.headers}" if self.headers else text
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        return f"{self.scheme}:{self.opaque}"

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def transport(self) -> str:
        """The transport the URI asks for (``UDP`` by default for sip:, ``TLS`` for sips:)."""
        value = self.params.get("transport")
        if value:
            return value.upper()
        return "TLS" if self.scheme == "sips" else "UDP"

    def address_of_record(self) -> str:
        """scheme:user@host without port or parameters: how a subscriber is named (tel: as +digits)."""
        if self.scheme == "tel":
            return f"tel:{self.user}"
        if self.is_sip:
            return f"{self.scheme}:{self.user}@{self.host}" if self.user else f"{self.scheme}:{self.host}"
        return str(self)


@dataclass(slots=True)
class NameAddr:
    """``"Display" <uri>;params`` or ``uri;params`` (RFC 3261 20.10, 20.20, 20.39 and others)."""

    uri: Uri
    display: str = ""
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        lt = _find_unquoted(text, "<")
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise SipParseError(f"unterminated <> in {text!r}")
            display = text[:lt].strip()
            uri = Uri.parse(text[lt + 1 : gt])
            return cls(uri, display, parse_params(text[gt + 1 :]))
        # addr-spec form: everything after the first ';' belongs to the header, not the URI (RFC 3261 20.10)
        uri_text, _, params = text.partition(";")
        return cls(Uri.parse(uri_text), "", parse_params(params))

    def __str__(self) -> str:
        display = f"{self.display} " if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


def _find_unquoted(text: str, ch: str) -> int:
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ch:
            return i
        i += 1
    return -1


@dataclass(slots=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...`` (RFC 3261 20.42, RFC 3581 rport)."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Via:
        text = text.strip()
        proto, _, rest = text.partition(" ")
        parts = [p.strip() for p in proto.split("/")]
        if len(parts) != 3 or parts[0].upper() != "SIP" or parts[1] != "2.0":
            raise SipParseError(f"bad Via protocol in {text!r}")
        sent_by, _, params = rest.strip().partition(";")
        host, port = _split_hostport(sent_by)
        if not host:
            raise SipParseError(f"Via without sent-by: {text!r}")
        return cls(parts[2].upper(), host.lower(), port, parse_params(params))

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {_hostport(self.host, self.port)}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> tuple[str, int]:
        default = 5061 if self.transport == "TLS" else 5060
        return self.host, self.port or default

    def response_target(self) -> tuple[str, int]:
        """Where a response to this hop goes (RFC 3261 18.2.2 with RFC 3581 rport); maddr is not honoured."""
        host = self.params.get("received") or self.host
        rport = self.params.get("rport")
        port = int(rport) if rport and rport.isdigit() else self.sent_by[1]
        return host, port


@dataclass(slots=True, frozen=True)
class CSeq:
    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) >= 2**31:
            raise SipParseError(f"bad CSeq {text!r}")
        return cls(int(parts[0]), parts[1].upper())

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


# -- headers and messages ------------------------------------------------------------------------------


class Headers:
    """Ordered header fields with canonical names; names compare case-insensitively through canonicalising."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items:
            self.add(name, value)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def copy(self) -> Headers:
        out = Headers()
        out._items = list(self._items)
        return out

    def get(self, name: str) -> str | None:
        name = canonical_name(name)
        for key, value in self._items:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        name = canonical_name(name)
        return [value for key, value in self._items if key == name]

    def add(self, name: str, value: str) -> None:
        """Append a field (list headers split into one field per value)."""
        name = canonical_name(name)
        if name in SPLIT_HEADERS:
            self._items.extend((name, v.strip()) for v in split_outside(value, ",") if v.strip())
        else:
            self._items.append((name, value.strip()))

    def push(self, name: str, value: str) -> None:
        """Put a value on top: before the first field of that name, or first of all if there is none."""
        name = canonical_name(name)
        for i, (key, _) in enumerate(self._items):
            if key == name:
                self._items.insert(i, (name, value))
                return
        self._items.insert(0, (name, value))

    def pop(self, name: str) -> str | None:
        """Remove and return the topmost value of that name."""
        name = canonical_name(name)
        for i, (key, value) in enumerate(self._items):
            if key == name:
                del self._items[i]
                return value
        return None

    def set(self, name: str, value: str) -> None:
        """One field of that name with ``value``, at the place of the first one (or appended)."""
        name = canonical_name(name)
        out: list[tuple[str, str]] = []
        placed = False
        for key, old in self._items:
            if key == name:
                if not placed:
                    out.append((name, value))
                    placed = True
            else:
                out.append((key, old))
        if not placed:
            out.append((name, value))
        self._items = out

    def remove(self, name: str) -> int:
        name = canonical_name(name)
        before = len(self._items)
        self._items = [(k, v) for k, v in self._items if k != name]
        return before - len(self._items)


class SipMessage:
    """What requests and responses share: headers, body and typed views of the common fields."""

    __slots__ = ("body", "headers")

    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        lines = [self.start_line()]
        for name, value in self.headers:
            if name != "Content-Length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    # typed views
    @property
    def call_id(self) -> str:
        value = self.headers.get("Call-ID")
        if value is None:
            raise SipParseError("no Call-ID")
        return value

    @property
    def cseq(self) -> CSeq:
        value = self.headers.get("CSeq")
        if value is None:
            raise SipParseError("no CSeq")
        return CSeq.parse(value)

    @property
    def from_(self) -> NameAddr:
        value = self.headers.get("From")
        if value is None:
            raise SipParseError("no From")
        return NameAddr.parse(value)

    @property
    def to(self) -> NameAddr:
        value = self.headers.get("To")
        if value is None:
            raise SipParseError("no To")
        return NameAddr.parse(value)

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        value = self.headers.get("Via")
        if value is None:
            raise SipParseError("no Via")
        return Via.parse(value)

    def name_addrs(self, name: str) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.headers.get_all(name)]


class Request(SipMessage):
    __slots__ = ("method", "uri")

    def __init__(self, method: str, uri: Uri, headers: Headers | None = None, body: bytes = b"") -> None:
        super().__init__(headers, body)
        self.method = method.upper()
        self.uri = uri

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def copy(self) -> Request:
        return Request(self.method, Uri.parse(str(self.uri)), self.headers.copy(), self.body)

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        if value is None:
            return None
        if not value.isdigit():
            raise SipParseError(f"bad Max-Forwards {value!r}")
        return int(value)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(SipMessage):
    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str = "", headers: Headers | None = None, body: bytes = b"") -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason or REASONS.get(status, "Unknown")

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def copy(self) -> Response:
        return Response(self.status, self.reason, self.headers.copy(), self.body)

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# -- parsing -------------------------------------------------------------------------------------------

_REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")


def parse_message(data: bytes) -> Request | Response:
    """One whole message (a UDP datagram, or one frame from ``StreamFramer``)."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        # A datagram may end right after the headers with a single CRLF.
        if data.endswith(b"\r\n"):
            head_end, body_start = len(data) - 2, len(data)
        else:
            raise SipParseError("no end of headers")
    else:
        body_start = head_end + 4
    if head_end > MAX_HEADER_BYTES:
        raise SipParseError("headers too large", 513)
    try:
        head = data[:head_end].decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8") from None
    lines = _unfold(head.split("\r\n"))
    while lines and not lines[0]:
        lines.pop(0)  # RFC 3261 7.5: empty lines before the start line are ignored
    if not lines:
        raise SipParseError("empty message")
    start = lines[0]
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            raise SipParseError(f"bad header line {line[:60]!r}")
        headers.add(name, value)
    body = data[body_start:]
    length_text = headers.get("Content-Length")
    if length_text is not None:
        if not length_text.isdigit():
            raise SipParseError(f"bad Content-Length {length_text!r}")
        length = int(length_text)
        if length > len(body):
            raise SipParseError("body shorter than Content-Length")
        body = body[:length]  # RFC 3261 18.3: octets past Content-Length are discarded
    if len(body) > MAX_BODY_BYTES:
        raise SipParseError("body too large", 513)
    msg: Request | Response
    if start.startswith(SIP_VERSION + " "):
        code_text, _, reason = start[len(SIP_VERSION) + 1 :].partition(" ")
        if len(code_text) != 3 or not code_text.isdigit() or not 100 <= int(code_text) <= 699:
            raise SipParseError(f"bad status line {start[:60]!r}")
        msg = Response(int(code_text), reason.strip() or "-", headers, body)
    else:
        parts = start.split(" ")
        if len(parts) != 3:
            raise SipParseError(f"bad request line {start[:60]!r}")
        method, uri_text, version = parts
        if version != SIP_VERSION:
            raise SipParseError(f"unsupported version {version!r}", 505)
        if not method or not all(c.isalnum() or c in "-.!%*_+`'~" for c in method):
            raise SipParseError(f"bad method {method!r}")
        msg = Request(method, Uri.parse(uri_text), headers, body)
    for name in _REQUIRED:
        if name not in headers:
            raise SipParseError(f"missing {name}")
    if isinstance(msg, Request) and msg.cseq.method != msg.method:
        raise SipParseError("CSeq method does not match the request method")
    msg.cseq  # noqa: B018 - validates the CSeq syntax now rather than on first use
    msg.top_via  # noqa: B018
    return msg


def refusal(data: bytes, error: SipParseError) -> tuple[Response, Via | None] | None:
    """The response to a request the parser refused (RFC 3261 16.3 and 8.2: 400, 505, 513), and its top Via
    when that one parses, or None when no response can be built.

    A response copies the request's Via, From, To, Call-ID and CSeq (8.2.6.2), so those must be readable
    as header lines even though something else in the request is not; they are copied as they came.  An
    ACK never gets a response, nor does anything that is not a request.
    """
    head = data[: MAX_HEADER_BYTES + 4]
    end = head.find(b"\r\n\r\n")
    lines = _unfold(head[: end if end >= 0 else len(head)].decode("utf-8", "replace").split("\r\n"))
    while lines and not lines[0]:
        lines.pop(0)
    parts = lines[0].split(" ") if lines else []
    if len(parts) != 3 or not parts[2].startswith("SIP/") or parts[0] == "ACK":
        return None
    if not parts[0] or not all(c.isalnum() or c in "-.!%*_+`'~" for c in parts[0]):
        return None
    copied: dict[str, list[str]] = {name: [] for name in _REQUIRED}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        canonical = canonical_name(name) if sep else ""
        if canonical in copied:
            values = split_outside(value, ",") if canonical == "Via" else [value]
            copied[canonical].extend(v.strip() for v in values if v.strip())
    if any(not values for values in copied.values()):
        return None
    headers = Headers()
    for value in copied["Via"]:
        headers.add("Via", value)
    for name in ("From", "To", "Call-ID", "CSeq"):
        headers.add(name, copied[name][0])
    try:
        top: Via | None = Via.parse(copied["Via"][0])
    except SipParseError:
        top = None
    return Response(error.status, "", headers), top


def _unfold(lines: list[str]) -> list[str]:
    """Join continuation lines (RFC 3261 7.3.1 header folding) to the line they continue."""
    out: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and out and out[-1]:
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


class StreamFramer:
    """Splits a TCP byte stream into whole messages by Content-Length (RFC 3261 18.3).

    CRLF keep-alives between messages (RFC 5626 4.4.1) are skipped; ``keepalives`` counts the double-CRLF
    pings so that a driver can answer them with a single CRLF.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.keepalives = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        while True:
            stripped = 0
            while self._buf[stripped : stripped + 2] == b"\r\n":
                stripped += 2
            if stripped:
                self.keepalives += stripped // 4
                del self._buf[:stripped]
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEADER_BYTES:
                    raise SipParseError("headers too large", 513)
                return frames
            length = _content_length(bytes(self._buf[:end]))
            if length > MAX_BODY_BYTES:
                raise SipParseError("body too large", 513)
            total = end + 4 + length
            if len(self._buf) < total:
                return frames
            frames.append(bytes(self._buf[:total]))
            del self._buf[:total]


def _content_length(head: bytes) -> int:
    for raw in head.split(b"\r\n")[1:]:
        name, sep, value = raw.partition(b":")
        if sep and name.strip().lower() in (b"content-length", b"l"):
            text = value.strip()
            if not text.isdigit():
                raise SipParseError(f"bad Content-Length {text!r}")
            return int(text)
    return 0  # RFC 3261 18.3 requires it on streams; a message without one is taken as having no body


# -- building ------------------------------------------------------------------------------------------


def make_response(request: Request, status: int, reason: str = "", to_tag: str | None = None) -> Response:
    """A response built from its request as RFC 3261 8.2.6.2 says: Via, From, Call-ID, CSeq copied; To
    copied with a tag added when the request's To had none (never on 100 Trying)."""
    headers = Headers()
    for value in request.headers.get_all("Via"):
        headers.add("Via", value)
    to_value = request.headers.get("To") or ""
    if to_tag is not None and status > 100:
        to = NameAddr.parse(to_value)
        if to.tag is None:
            to.params["tag"] = to_tag
            to_value = str(to)
    headers.add("From", request.headers.get("From") or "")
    headers.add("To", to_value)
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", str(request.cseq))
    if status == 100 and (timestamp := request.headers.get("Timestamp")) is not None:
        headers.add("Timestamp", timestamp)  # RFC 3261 8.2.6.1
    return Response(status, reason, headers)
