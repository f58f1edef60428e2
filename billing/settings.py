"""Configuration of the billing package: the [billing] section of the charging configuration file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TaxSetting(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=40)  # printed on the invoice, e.g. "VAT"
    basis_points: int = Field(ge=0, le=100_000)  # 1900 = 19 %


class BillingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    consumer_group: str = "charging-billing"  # Kafka consumer group shared by every billing instance
    batch_max_records: int = Field(default=500, ge=1, le=10_000)  # CDRs stored and rated per transaction
    poll_timeout_ms: int = Field(default=200, ge=10, le=10_000)  # how long one poll waits for records
    session_timeout_ms: int = Field(default=6_000, ge=1_000)  # group membership lease (6 s joins tansu fast)
    max_poll_interval_ms: int = Field(default=30_000, ge=1_000)  # longest batch before the group evicts us
    retry_seconds: float = Field(default=1.0, gt=0)  # wait before retrying a batch the database refused
    invoice_number_prefix: str = Field(default="INV-", max_length=16)  # invoice numbers: prefix + 8 digits
    default_currency: str = Field(default="EUR", min_length=3, max_length=3)  # for accounts created without one
    default_time_zone: str = "UTC"  # bill cycles and usage days of accounts created without one
    default_taxes: list[TaxSetting] = Field(default_factory=list)  # taxes of accounts created without their own
    feed_poll_seconds: float = Field(default=1.0, gt=0)  # live feed: how often it looks for CDRs of other instances
