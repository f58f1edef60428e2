"""Configuration of the cdf package: the [cdf] section of the charging configuration file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class CdfSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
