"""Configuration of the ocf package: the [ocf] section of the charging configuration file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class OcfSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Service contexts served, by the part after the last release dot of
    # "[ext.]MNC.MCC.release.32260@3gpp.org" (TS 32.299 7.1.12); anything else gets 5031.
    service_contexts: list[str] = Field(default_factory=lambda: ["32260@3gpp.org"])
    # Contexts accepted but not credit-controlled here: their CCRs get 4011.
    not_applicable_contexts: list[str] = Field(default_factory=list)

    # Quota sizing: the grant when the client asks for nothing particular, and the most granted at once.
    grant_seconds: int = Field(default=300, ge=1)
    grant_octets: int = Field(default=10 * 1024 * 1024, ge=1)
    grant_units: int = Field(default=10, ge=1)
    grant_money: int = Field(default=500, ge=1)  # minor units, for CC-Money requests
    # Per rating group override of the grant in that group's unit, e.g. {"100" = 600}.
    rating_group_grants: dict[str, int] = Field(default_factory=dict)

    validity_time_seconds: int = Field(default=1800, ge=1)  # Validity-Time sent with every grant
    tcc_margin_seconds: int = Field(default=60, ge=0)  # Tcc = Validity-Time + this margin (RFC 4006 13)
    sweep_interval_seconds: float = Field(default=5.0, gt=0)  # how often silent sessions are looked for
    answer_retention_seconds: int = Field(default=86_400, ge=0)  # stored answers of closed sessions kept

    # Graceful service termination (RFC 4006 5.6) when a grant is the last the balance allows.
    final_unit_action: Literal["TERMINATE", "REDIRECT", "RESTRICT_ACCESS"] = "TERMINATE"
    redirect_address_type: Literal["IPV4_ADDRESS", "IPV6_ADDRESS", "URL", "SIP_URI"] = "SIP_URI"
    redirect_server_address: str = "sip:topup@localdomain"  # used with REDIRECT
    restriction_filter_ids: list[str] = Field(default_factory=list)  # Filter-Id sent with RESTRICT_ACCESS

    # Threshold AVPs (TS 32.299 7.2.218/7.2.234/7.2.225): percent of the grant left when the client reports.
    quota_threshold_percent: int = Field(default=0, ge=0, le=99)  # 0: no thresholds sent

    cost_information: bool = True  # Cost-Information in CCAs of sessions and events
    low_balance_threshold: int = Field(default=0, ge=0)  # minor units; 0: no Low-Balance-Indication
    default_currency: int = Field(default=978, ge=0, le=999)  # ISO 4217 numeric (978 = EUR)

    # Failure handling the OCF tells its clients to apply (RFC 4006 5.7 and 6.5); None: not sent.
    credit_control_failure_handling: Literal["TERMINATE", "CONTINUE", "RETRY_AND_TERMINATE"] | None = None
    direct_debiting_failure_handling: Literal["TERMINATE_OR_BUFFER", "CONTINUE"] | None = None

    teardown_poll_seconds: float = Field(default=1.0, gt=0)  # how often ASR/RAR work left by others is polled
    teardown_timeout_seconds: float = Field(default=5.0, gt=0)  # wait for an ASA or RAA
    max_batch: int = Field(default=512, ge=1)  # CCRs settled per database transaction at most
    # Concurrent CCR transactions on PostgreSQL (SQLite uses one): more overlap the database's latency.
    writers: int = Field(default=2, ge=1, le=8)

    @field_validator("rating_group_grants")
    @classmethod
    def _rating_groups(cls, value: dict[str, int]) -> dict[str, int]:
        for key, grant in value.items():
            if not key.isdigit():
                raise ValueError(f"rating group {key!r} is not a number")
            if grant < 1:
                raise ValueError(f"grant for rating group {key} must be at least 1")
        return value
