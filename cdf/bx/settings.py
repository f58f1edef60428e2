"""Configuration of the Bx CDR file writer (docs/cdr-files.md)."""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cdf.bx.fileformat import MAX_FILE_LENGTH, Release

_NAME = re.compile(r"[A-Za-z0-9._+-]+")


class BxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    directory: str = "var/cdr-files"  # the output folder billing collects from; temporary files in its .tmp/
    # Files are named <file_prefix><node_id>_-_<file sequence number>.<date>_-_<time and UTC offset>.
    node_id: str = Field(default="CDF", min_length=1)
    file_prefix: str = ""
    # One file sequence per writer name; instances sharing a name take turns through a lease.
    writer_name: str = Field(default="bx", min_length=1)

    # File closure triggers (TS 32.297 file closure trigger reasons 1, 2, 3); shutdown closes too (0).
    max_file_bytes: int = Field(default=4 << 20, ge=1024, le=MAX_FILE_LENGTH)
    max_records: int = Field(default=10_000, ge=1, le=0xFFFFFFFE)
    max_file_age_seconds: float = Field(default=300.0, gt=0)

    poll_seconds: float = Field(default=1.0, gt=0)  # look for new CDRs in the outbox this often
    batch: int = Field(default=500, ge=1, le=100_000)  # outbox rows read per query
    lease_seconds: float = Field(default=15.0, gt=0)  # another instance may take over after this much silence
    retention_days: float = Field(default=7.0, gt=0)  # journal rows of closed files are kept this long

    # File header (TS 32.297 6.1.1) and CDR header (6.1.2) contents.
    node_ip_address: str = "127.0.0.1"  # IP address of the node that generated the file
    release: int = Field(default=16, ge=4, le=265)  # the TS 32.298 release the records follow (pycrate 0.8.1: 16.11.0)
    version: int = Field(default=11, ge=0, le=31)
    utc_offset_minutes: int = Field(default=0, gt=-24 * 60, lt=24 * 60)  # local time of header and CDR time stamps
    routing_filter: str = ""
    private_extension: str = ""

    @field_validator("node_ip_address")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @field_validator("node_id", "file_prefix", "writer_name")
    @classmethod
    def _file_name_safe(cls, value: str) -> str:
        if value and not _NAME.fullmatch(value):
            raise ValueError("letters, digits and . _ + - only (it goes into file names)")
        return value

    @property
    def release_version(self) -> Release:
        return Release(self.release, self.version)
