"""Configuration of the cdf package: the [cdf] section of the charging configuration file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

REMEMBERED_RECORDS = 20_000  # open records the CDF store keeps in memory by default


class CdfSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Acct-Interim-Interval put in every ACA to a START or INTERIM (RFC 6733 9.8.2); 0: none sent, and each
    # session keeps the interval its node announced in its ACRs.
    acct_interim_interval_seconds: int = Field(default=0, ge=0)
    # A session that sends no ACR for this many interim intervals is closed by the CDF as incomplete.
    incomplete_interval_multiple: float = Field(default=3.0, gt=1)
    # The silence limit of sessions with no interim interval at all (neither configured nor announced).
    incomplete_timeout_seconds: float = Field(default=7200.0, gt=0)
    sweep_interval_seconds: float = Field(default=5.0, gt=0)  # how often silent and over-long records are looked for
    sweep_batch: int = Field(default=500, ge=1)  # records closed per sweep transaction at most

    # Partial CDRs (TS 32.298 5.1.3.1.33: record sequence number): what closes one and opens the next.
    interim_closes_partial: bool = True  # every ACR[Interim] closes a partial record
    partial_max_duration_seconds: float = Field(default=0.0, ge=0)  # a record open this long is closed; 0: off
    partial_max_changes: int = Field(default=0, ge=0)  # changes of media (containers) per record; 0: off

    max_batch: int = Field(default=512, ge=1, le=5000)  # ACRs written per database statement batch at most
    # Open records kept in memory with their version, so that an INTERIM or STOP needs no read of its record
    # (about 5 KB each); 0 reads every record from the database.
    remembered_records: int = Field(default=REMEMBERED_RECORDS, ge=0)

    # Outbox publisher (Kafka topic and bootstrap come from the [kafka] section).
    publish: bool = True  # send outbox CDRs to Kafka; off: they stay in the outbox (and files)
    publish_batch: int = Field(default=1000, ge=1, le=100_000)  # CDRs sent per round before marking them
    publish_timeout_seconds: float = Field(default=30.0, gt=0)  # delivery timeout of one record
    publish_poll_seconds: float = Field(default=0.5, gt=0)  # look for CDRs written by other instances this often
    publish_backoff_max_seconds: float = Field(default=5.0, gt=0)  # longest wait between failed rounds
    lease_seconds: float = Field(default=10.0, gt=0)  # a publisher or file writer lease lasts this long unrenewed

    # Rotated JSON-lines CDR files for the billing domain (docs/cdf.md, "CDR files").
    files_enabled: bool = False
    files_directory: str = "var/cdr-jsonl"  # not the TS 32.297 writer's folder (cdf.bx)
    file_max_bytes: int = Field(default=64 << 20, ge=1024)  # rotate when the open file reaches this size
    file_max_records: int = Field(default=100_000, ge=1)  # rotate after this many CDRs
    file_max_age_seconds: float = Field(default=300.0, gt=0)  # rotate an open file this old
    file_poll_seconds: float = Field(default=1.0, gt=0)  # look for CDRs to write this often

    # Correlation: IOIs of the home network, so that the view knows which terminating legs to expect here.
    home_iois: list[str] = Field(default_factory=list)  # empty: every originating leg expects a terminating one

    retention_days: float = Field(default=7.0, gt=0)  # ACR log rows and published CDRs older than this are purged
