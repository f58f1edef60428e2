"""Configuration of the billing package: the [billing] section of the charging configuration file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class BillingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
