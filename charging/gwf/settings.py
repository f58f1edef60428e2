"""Configuration of the IMS-GWF: the ``[gwf]`` section of a charging configuration file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from charging.gwf.sip.message import SipParseError, Uri

Transport = Literal["UDP", "TCP"]
ALL_TRANSPORTS: tuple[Transport, ...] = ("UDP", "TCP")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiameterPeer(_Section):
    host: str = "charging.localdomain"  # the peer's Origin-Host (that of `charging serve` by default)
    realm: str = "localdomain"
    address: str = "127.0.0.1"
    port: int = Field(default=3868, ge=1, le=65535)


class RfSettings(_Section):
    """Offline reporting of the sessions to a CDF as an AS (ACR START/INTERIM/STOP)."""

    cdf: DiameterPeer
    interim_interval_seconds: int = Field(default=0, ge=0)  # 0: only what the CDF asks for in its ACAs


class GwfSettings(_Section):
    # SIP
    sip_address: str = "127.0.0.1"  # where the SIP listeners bind
    sip_host: str | None = None  # the host put in Via and Record-Route; default sip_address
    transports: list[Transport] = Field(default_factory=lambda: list(ALL_TRANSPORTS), min_length=1)
    udp_port: int = Field(default=5060, ge=0, le=65535)  # 0 picks a free port
    tcp_port: int = Field(default=5060, ge=0, le=65535)
    next_hop: str | None = None  # SIP URI where initial requests without a Route go, e.g. sip:10.0.0.2:5070
    aliases: list[str] = Field(default_factory=list)  # other host:port values that name this AS
    role: Literal["originating", "terminating"] = "originating"  # Role-Of-Node without P-Served-User
    t1_seconds: float = Field(default=0.5, gt=0)  # RFC 3261 T1
    t2_seconds: float = Field(default=4.0, gt=0)
    t4_seconds: float = Field(default=5.0, gt=0)
    timer_c_seconds: float = Field(default=180.0, gt=0)

    # Diameter node of the GWF
    origin_host: str = "gwf.localdomain"
    origin_realm: str = "localdomain"
    host_ip_address: str = "127.0.0.1"
    watchdog_seconds: float = Field(default=30.0, gt=0)

    # Ro
    ocf: DiameterPeer = Field(default_factory=DiameterPeer)
    destination_realm: str | None = None  # default: the OCF's realm
    send_destination_host: bool = False
    service_context_id: str = "32260@3gpp.org"
    rating_group: int | None = Field(default=100, ge=0)
    service_identifier: int | None = Field(default=None, ge=0)
    requested_seconds: int | None = Field(default=60, ge=1)  # CC-Time in Requested-Service-Unit
    quota_margin_seconds: float = Field(default=1.0, ge=0)  # CCR-U this long before the grant runs out
    failure_handling: Literal["TERMINATE", "CONTINUE", "RETRY_AND_TERMINATE"] = "TERMINATE"
    tx_seconds: float = Field(default=10.0, gt=0)  # RFC 4006 13: Tx, default 10 s
    failover_seconds: float = Field(default=10.0, gt=0)  # wait for the retried request after Tx

    # Rf (optional)
    rf: RfSettings | None = None

    record_size: int = Field(default=10_000, ge=0)  # SIP messages kept in the record of what was sent

    @field_validator("next_hop")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            uri = Uri.parse(value if ":" in value and value.split(":", 1)[0] in ("sip", "sips") else f"sip:{value}")
        except SipParseError as exc:
            raise ValueError(str(exc)) from None
        if not uri.is_sip:
            raise ValueError("must be a sip: URI")
        return str(uri)

    @model_validator(mode="after")
    def _some_transport(self) -> GwfSettings:
        if self.sip_address in ("0.0.0.0", "::") and not self.sip_host:
            raise ValueError("sip_host is needed when sip_address is a wildcard: Via and Record-Route name a host")
        return self
