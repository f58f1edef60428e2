"""Configuration of the ocf package: the [ocf] section of the charging configuration file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class OcfSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
