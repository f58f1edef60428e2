"""Rotated JSON-lines CDR files for the billing domain, beside Kafka (layout in docs/cdf.md, "CDR files").

One CDR per line, the same JSON as the Kafka value, in outbox order.  The open file is
``<name>.jsonl.tmp``; it is fsynced before its CDRs are marked ``jsonl_written_at``, and renamed to
``<name>.jsonl`` when it is rotated (by size, number of CDRs or age) or the writer stops.  A consumer
takes only ``*.jsonl`` files, which never change once they have that name.  Leftover ``.tmp`` files of a
crashed writer are renamed at start; CDRs written but not yet marked when it crashed are written again
in a later file, so consumers deduplicate on ``cdr_id``.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Column

from cdf.models import outbox
from cdf.sink import OutboxRow, OutboxSink, RunWrite, SinkTiming
from charging.clock import Clock

log = logging.getLogger("charging.cdf")

SUFFIX = ".jsonl"
OPEN_SUFFIX = ".jsonl.tmp"


class CdrFileWriter(OutboxSink):
    lease_name = "jsonl-files"
    column: Column[Any] = outbox.c.jsonl_written_at

    def __init__(
        self,
        run_write: RunWrite[Any],
        *,
        directory: str | os.PathLike[str],
        owner: str,
        clock: Clock,
        timing: SinkTiming,
        max_bytes: int = 64 << 20,
        max_records: int = 100_000,
        max_age_seconds: float = 300.0,
    ) -> None:
        super().__init__(run_write, owner=owner, clock=clock, timing=timing)
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.max_age = max_age_seconds
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._records = 0
        self._bytes = 0
        self._sequence = 0
        self.files_closed = 0

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in sorted(self.directory.glob(f"*{OPEN_SUFFIX}")):
            self._finalise(leftover)
        super().start()

    def _file_name(self, now: float) -> str:
        self._sequence += 1
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S")
        safe_owner = "".join(c if c.isalnum() or c in "-." else "_" for c in self.owner)
        return f"cdr_{safe_owner}_{stamp}Z_{self._sequence:06d}"

    def _open(self) -> IO[bytes]:
        if self._file is None:
            now = self.clock.now()
            self._path = self.directory / (self._file_name(now) + OPEN_SUFFIX)
            self._file = self._path.open("ab")
            self._opened_at = now
            self._records = 0
            self._bytes = 0
        return self._file

    def _finalise(self, path: Path) -> None:
        final = path.with_name(path.name[: -len(OPEN_SUFFIX)] + SUFFIX)
        os.replace(path, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
        self.files_closed += 1
        log.info("CDR file %s closed", final.name)

    def rotate(self) -> None:
        """Close the open file and give it its final name."""
        if self._file is None or self._path is None:
            return
        self._file.close()
        path, self._file, self._path = self._path, None, None
        if self._records:
            self._finalise(path)
        else:
            path.unlink(missing_ok=True)

    def deliver(self, rows: list[OutboxRow]) -> tuple[list[int], BaseException | None]:
        delivered: list[int] = []
        index = 0
        while index < len(rows):
            file = self._open()
            chunk = rows[index : index + self.max_records - self._records]
            data = b"".join(row.payload.encode() + b"\n" for row in chunk)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rows are marked written
            self._records += len(chunk)
            self._bytes += len(data)
            delivered.extend(row.id for row in chunk)
            index += len(chunk)
            if self._records >= self.max_records or self._bytes >= self.max_bytes:
                self.rotate()
        return delivered, None

    def on_idle(self) -> None:
        if self._file is not None and self.clock.now() - self._opened_at >= self.max_age:
            self.rotate()

    def on_stop(self) -> None:
        self.rotate()
