"""The Bx file sink: CDRs from the CDF outbox into TS 32.297 files in a folder billing collects from.

One writer per writer name holds a lease (``bx_writer``) and does, each round (``run_once``):

1. Closes the open file if it is older than ``max_file_age_seconds``.
2. Reads outbox rows that no file holds yet (``file_written_at IS NULL``, not in ``bx_file_cdr``), in id
   order, encodes each as its TS 32.298 record in BER behind a TS 32.297 CDR header, and appends it to
   the open file, a temporary file in ``<directory>/.tmp/``.  The file closes when the next CDR would take
   it past ``max_file_bytes`` or when it holds ``max_records``; shutdown closes it too.

Closing a file, in this order, is what keeps every CDR in exactly one completed file across crashes:

    a. the final header (lengths, CDR count, sequence number, closure reason) is written, the file fsynced;
    b. one transaction takes the next file sequence number, records the file as ``closing`` and journals
       which outbox rows it holds (``bx_file_cdr``: an outbox row can be journaled once only);
    c. the file is renamed into the output folder (atomic on one file system), the folder fsynced;
    d. one transaction marks the rows ``file_written_at`` and the file ``closed``.

Recovery, when a writer takes the lease and after any failed close: every ``closing`` file rolls forward.
Its temporary file is complete (a. came before b.), so if it is still there it is renamed now; if it is
gone it was renamed already (and may have been collected since); either way its rows are marked.  Every
other temporary file is a file that never reached b.: it is deleted, and its CDRs, unmarked and
unjournaled, go into the next file, whose sequence number is the one the lost file would have had.
A CDR is thus marked only when the file holding it is complete and published, and it is never written
into a second file once its file reached b.  A journal transaction whose outcome this process does not
know (``run_write`` gave up waiting, the connection broke during COMMIT) keeps its temporary file until a
recovery finds it journaled or the process restarts: if it commits late, the file is still there to
publish, and if it never does, its CDRs simply go into another file (the sequence number check and the
one-journal-row-per-CDR key make the late commit and the new file exclude each other).

A CDR that cannot be encoded (not a valid Cdr, or a value the ASN.1 does not allow) is journaled without a
file and with the reason, logged, and left unmarked in the outbox for an operator to look at.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from sqlalchemy import Connection, Engine, Table, and_, delete, exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from cdf.bx import asn1, records
from cdf.bx.fileformat import UNKNOWN_CDR_COUNT, FileClosureReason, FileHeader, HeaderTime, encode_cdr
from cdf.bx.models import CLOSED, CLOSING, file, file_cdr, writer
from cdf.bx.settings import BxSettings
from cdf.models import outbox as cdf_outbox
from charging.cdr import Cdr
from charging.clock import Clock, SystemClock

log = logging.getLogger("charging.cdf.bx")

T = TypeVar("T")

TEMP_FOLDER = ".tmp"
MAX_SEQUENCE = 0xFFFFFFFF
_PURGE_EVERY_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class ClosedFile:
    file_sequence_number: int
    path: Path
    cdr_count: int
    closure_reason: FileClosureReason


@dataclass(slots=True)
class _OpenFile:
    temp_name: str
    handle: BinaryIO
    opened_at: float
    last_append_at: float
    size: int
    outbox_ids: list[int] = field(default_factory=list)
    cdr_ids: list[str] = field(default_factory=list)


class _LostRace(Exception):
    """Another writer moved the file sequence on, or journaled one of our CDRs first."""


def _fsync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BxFileWriter:
    """Writes the outbox's CDRs into TS 32.297 files; ``start``/``stop`` in a thread, or ``run_once``.

    ``owner`` names this instance in the lease: a restarted process with the same owner takes its lease
    back at once.  ``checkpoint`` is called with "appended", "synced", "journaled", "renamed" and
    "marked" as the closing of a file passes each step (crash tests stop the process there).
    """

    def __init__(
        self,
        engine: Engine,
        settings: BxSettings,
        *,
        owner: str,
        clock: Clock | None = None,
        outbox: Table = cdf_outbox,
        run_write: Callable[[Callable[[Connection], Any]], Any] | None = None,
        checkpoint: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self._run_write = run_write
        self.settings = settings
        self.owner = owner
        self.clock: Clock = clock or SystemClock()
        self.outbox = outbox
        self.directory = Path(settings.directory)
        self.temp_folder = self.directory / TEMP_FOLDER
        self._checkpoint = checkpoint or (lambda _step: None)
        self._release = settings.release_version
        self._node_address = ipaddress.ip_address(settings.node_ip_address)
        self._open: _OpenFile | None = None
        self._after = 0  # highest outbox id appended to the open file
        self._leader = False
        self._lease_until = 0.0
        self._needs_recovery = True
        self._in_doubt: set[str] = set()  # temporary files whose journal transaction has an unknown outcome
        self._last_purge = float("-inf")
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.rejected = 0

    # ----------------------------------------------------------------------------------------------------
    # Background operation

    def start(self) -> None:
        """Run rounds every ``poll_seconds`` in a thread until ``stop``."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="bx-file-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the thread; it closes the open file (closure reason: normal) and releases the lease."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        wait = self.settings.poll_seconds
        while not self._stopping.is_set():
            try:
                self.run_once()
                wait = self.settings.poll_seconds
            except Exception:
                log.exception("CDR file writer round failed; retrying")
                wait = min(wait * 2, 30.0)
            self._stopping.wait(wait)
        try:
            self.shutdown()
        except Exception:
            log.exception("CDR file writer could not close its file on shutdown")

    # ----------------------------------------------------------------------------------------------------
    # Rounds

    @property
    def open_cdr_count(self) -> int:
        return len(self._open.outbox_ids) if self._open else 0

    def run_once(self, now: float | None = None) -> list[ClosedFile]:
        """One round: recover if needed, close an over-age file, append what the outbox holds."""
        with self._lock:
            now = self.clock.now() if now is None else now
            if not self._hold_lease(now):
                self._abandon()
                return []
            if self._needs_recovery:
                self._recover(now)
            closed: list[ClosedFile] = []
            if self._open is not None and now - self._open.opened_at >= self.settings.max_file_age_seconds:
                self._close(FileClosureReason.TIME_LIMIT, now, closed)
                if self._needs_recovery:
                    return closed
            while True:
                if self._open is None:
                    self._after = 0  # no file open: look again from the start for rows committed late
                rows = self._fetch()
                for outbox_id, cdr_id, payload in rows:
                    self._after = max(self._after, outbox_id)
                    self._append(outbox_id, cdr_id, payload, now, closed)
                    if self._needs_recovery:  # a close failed: stop here, recover next round
                        return closed
                if self._open is not None:
                    try:
                        self._open.handle.flush()
                    except BaseException:
                        self._abandon()
                        raise
                    self._checkpoint("appended")
                if len(rows) < self.settings.batch:
                    break
            if now - self._last_purge >= _PURGE_EVERY_SECONDS:
                self._purge(now)
            return closed

    def close_file(
        self, reason: FileClosureReason = FileClosureReason.MANUAL_INTERVENTION, now: float | None = None
    ) -> ClosedFile | None:
        """Close the open file now (if this writer holds the lease and a file is open)."""
        with self._lock:
            now = self.clock.now() if now is None else now
            closed: list[ClosedFile] = []
            if self._open is not None and self._hold_lease(now):
                self._close(reason, now, closed)
            return closed[0] if closed else None

    def shutdown(self, now: float | None = None) -> ClosedFile | None:
        """Close the open file (closure reason: normal) and release the lease."""
        with self._lock:
            closed = self.close_file(FileClosureReason.NORMAL, now)
            self._abandon()
            if self._leader:
                release = (
                    update(writer)
                    .where(writer.c.name == self.settings.writer_name, writer.c.owner == self.owner)
                    .values(lease_expires_at=0.0)
                )
                self._db(lambda conn: conn.execute(release))
                self._leader = False
            return closed

    def _db(self, unit: Callable[[Connection], T]) -> T:
        """Run ``unit`` in a transaction of its own: through ``run_write`` when given, else on the engine."""
        if self._run_write is not None:
            result: T = self._run_write(unit)
            return result
        with self.engine.begin() as conn:
            return unit(conn)

    # ----------------------------------------------------------------------------------------------------
    # Lease

    def _hold_lease(self, now: float) -> bool:
        if self._leader and now < self._lease_until - self.settings.lease_seconds / 2:
            return True
        name, until = self.settings.writer_name, now + self.settings.lease_seconds

        def take(conn: Connection) -> bool:
            taken = conn.execute(
                update(writer)
                .where(
                    writer.c.name == name,
                    or_(writer.c.owner == self.owner, writer.c.owner.is_(None), writer.c.lease_expires_at < now),
                )
                .values(owner=self.owner, lease_expires_at=until)
            ).rowcount
            if taken:
                return True
            if conn.execute(select(writer.c.name).where(writer.c.name == name)).first() is not None:
                return False
            conn.execute(
                insert(writer).values(name=name, last_file_sequence_number=0, owner=self.owner, lease_expires_at=until)
            )
            return True

        try:
            taken = self._db(take)
        except IntegrityError:
            taken = False  # another instance created the row at the same moment
        if taken and not self._leader:
            log.info("CDR file writer %s: %s holds the lease", name, self.owner)
            self._needs_recovery = True
        self._leader = bool(taken)
        self._lease_until = until if taken else 0.0
        return self._leader

    # ----------------------------------------------------------------------------------------------------
    # Appending

    def _fetch(self) -> list[tuple[int, str, str]]:
        o = self.outbox
        query = (
            select(o.c.id, o.c.cdr_id, o.c.payload)
            .where(
                o.c.file_written_at.is_(None),
                o.c.id > self._after,
                ~exists().where(file_cdr.c.cdr_id == o.c.cdr_id),
            )
            .order_by(o.c.id)
            .limit(self.settings.batch)
        )
        return self._db(lambda conn: [(int(r.id), str(r.cdr_id), str(r.payload)) for r in conn.execute(query)])

    def encode(self, payload: str) -> bytes:
        """One outbox payload (a Cdr as JSON) as a CDR header and its BER record; ValueError if it cannot be."""
        cdr = Cdr.from_json(payload)
        record_type, value = records.to_record(cdr, self.settings.utc_offset_minutes)
        return encode_cdr(asn1.encode_record(record_type, value), self._release)

    def _append(self, outbox_id: int, cdr_id: str, payload: str, now: float, closed: list[ClosedFile]) -> None:
        try:
            encoded = self.encode(payload)
        except ValueError as exc:
            self._reject(outbox_id, cdr_id, str(exc))
            return
        limit = self.settings.max_file_bytes
        if self._open is not None and self._open.size + len(encoded) > limit:
            self._close(FileClosureReason.SIZE_LIMIT, now, closed)
            if self._needs_recovery:
                return
        if self._open is None:
            self._open = self._new_file(now)
        current = self._open
        try:
            current.handle.write(encoded)
        except BaseException:
            self._abandon()  # a half-written CDR spoils the file: start over with these CDRs in a new one
            raise
        current.size += len(encoded)
        current.outbox_ids.append(outbox_id)
        current.cdr_ids.append(cdr_id)
        current.last_append_at = now
        if len(current.outbox_ids) >= self.settings.max_records:
            self._close(FileClosureReason.CDR_COUNT_LIMIT, now, closed)
        elif current.size >= limit:
            self._close(FileClosureReason.SIZE_LIMIT, now, closed)

    def _reject(self, outbox_id: int, cdr_id: str, reason: str) -> None:
        log.error("CDR file writer: CDR %s cannot be encoded and stays out of the files: %s", cdr_id, reason)
        row = {"cdr_id": cdr_id, "outbox_id": outbox_id, "file_id": None, "rejected_reason": reason[:2000]}
        self._db(lambda conn: conn.execute(insert(file_cdr).values(**row)))
        self.rejected += 1

    def _header(self, current: _OpenFile, sequence: int, reason: int, count: int) -> FileHeader:
        offset = self.settings.utc_offset_minutes
        return FileHeader(
            file_length=current.size,
            high=self._release,
            low=self._release,
            opened=HeaderTime.at(current.opened_at, offset),
            last_append=HeaderTime.at(current.last_append_at, offset),
            cdr_count=count,
            file_sequence_number=sequence,
            closure_reason=reason,
            node_address=self._node_address,
            routing_filter=self.settings.routing_filter.encode(),
            private_extension=self.settings.private_extension.encode(),
        )

    def _new_file(self, now: float) -> _OpenFile:
        self.temp_folder.mkdir(parents=True, exist_ok=True)
        temp_name = f"{self.settings.writer_name}-{uuid.uuid4().hex}.tmp"
        handle = open(self.temp_folder / temp_name, "xb")  # noqa: SIM115 - held open across rounds
        current = _OpenFile(temp_name, handle, opened_at=now, last_append_at=now, size=0)
        placeholder = self._header(current, 0, FileClosureReason.ABNORMAL, UNKNOWN_CDR_COUNT).encode()
        handle.write(placeholder)
        current.size = len(placeholder)
        return current

    def file_name(self, sequence: int, opened_at: float) -> str:
        offset = self.settings.utc_offset_minutes
        local = datetime.fromtimestamp(opened_at, timezone(timedelta(minutes=offset)))
        sign = "-" if offset < 0 else "+"
        zone = f"{sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"
        return (
            f"{self.settings.file_prefix}{self.settings.node_id}_-_{sequence:010d}.{local:%Y%m%d}_-_{local:%H%M}{zone}"
        )

    # ----------------------------------------------------------------------------------------------------
    # Closing

    def _close(self, reason: FileClosureReason, now: float, closed: list[ClosedFile]) -> None:
        current = self._open
        if current is None:
            return
        self._open = None
        name = self.settings.writer_name
        try:
            last = select(writer.c.last_file_sequence_number).where(writer.c.name == name)
            previous = int(self._db(lambda conn: conn.execute(last).scalar_one()))
            sequence = previous % MAX_SEQUENCE + 1
            final_name = self.file_name(sequence, current.opened_at)
            # a. the final header, and the file on disk for good
            header = self._header(current, sequence, reason, len(current.outbox_ids))
            current.handle.seek(0)
            current.handle.write(header.encode())
            current.handle.flush()
            os.fsync(current.handle.fileno())
            current.handle.close()
            _fsync_folder(self.temp_folder)
        except BaseException:
            self._discard(current)  # never journaled: its CDRs go into the next file
            raise
        self._checkpoint("synced")
        # b. sequence number and journal, one transaction
        try:
            file_id = self._db(lambda conn: self._journal(conn, current, previous, sequence, final_name, reason, now))
        except (_LostRace, IntegrityError) as exc:  # rolled back for certain: the temporary file is ours to drop
            log.warning(
                "CDR file writer %s: file %d not journaled (%s); its CDRs go into another file", name, sequence, exc
            )
            self._delete_temp(current.temp_name)
            self._needs_recovery = True
            return
        except BaseException:
            # The commit may or may not have happened (or may yet happen, queued in run_write): keep the
            # temporary file until a recovery finds it journaled, or until the process restarts.
            self._in_doubt.add(current.temp_name)
            self._needs_recovery = True
            raise
        self._checkpoint("journaled")
        # c. published
        final = self.directory / final_name
        try:
            self._publish(current.temp_name, final)
            self._checkpoint("renamed")
            # d. marked
            self._mark(file_id, now)
        except BaseException:
            self._needs_recovery = True
            raise
        self._checkpoint("marked")
        log.info("CDR file %s closed (%s): %d CDRs", final_name, reason.name.lower(), len(current.outbox_ids))
        closed.append(ClosedFile(sequence, final, len(current.outbox_ids), reason))

    def _journal(
        self,
        conn: Connection,
        current: _OpenFile,
        previous: int,
        sequence: int,
        final_name: str,
        reason: FileClosureReason,
        now: float,
    ) -> int:
        moved = conn.execute(
            update(writer)
            .where(
                writer.c.name == self.settings.writer_name,
                writer.c.owner == self.owner,
                writer.c.last_file_sequence_number == previous,
            )
            .values(last_file_sequence_number=sequence)
        ).rowcount
        if moved != 1:
            raise _LostRace("the file sequence moved on, or the lease is another instance's")
        file_id = conn.execute(
            insert(file)
            .values(
                writer=self.settings.writer_name,
                file_sequence_number=sequence,
                file_name=final_name,
                temp_name=current.temp_name,
                status=CLOSING,
                closure_reason=int(reason),
                cdr_count=len(current.outbox_ids),
                file_bytes=current.size,
                opened_at=current.opened_at,
                closed_at=now,
            )
            .returning(file.c.id)
        ).scalar_one()
        conn.execute(
            insert(file_cdr),
            [
                {"cdr_id": cdr_id, "outbox_id": outbox_id, "file_id": file_id, "position": position}
                for position, (outbox_id, cdr_id) in enumerate(zip(current.outbox_ids, current.cdr_ids, strict=True), 1)
            ],
        )
        return int(file_id)

    def _publish(self, temp_name: str, final: Path) -> None:
        """Rename a complete temporary file into the output folder, never over another file."""
        if final.exists():
            raise FileExistsError(f"{final} exists already; the CDR file writer will not overwrite it")
        os.rename(self.temp_folder / temp_name, final)
        _fsync_folder(self.directory)

    def _mark(self, file_id: int, now: float) -> None:
        o = self.outbox
        held = select(file_cdr.c.cdr_id).where(file_cdr.c.file_id == file_id)

        def mark(conn: Connection) -> None:
            conn.execute(
                update(o).where(o.c.cdr_id.in_(held), o.c.file_written_at.is_(None)).values(file_written_at=now)
            )
            conn.execute(update(file).where(file.c.id == file_id).values(status=CLOSED, marked_at=now))

        self._db(mark)

    # ----------------------------------------------------------------------------------------------------
    # Recovery and housekeeping

    def _recover(self, now: float) -> None:
        """Roll every ``closing`` file forward; delete temporary files that never reached the journal."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.temp_folder.mkdir(parents=True, exist_ok=True)
        name = self.settings.writer_name
        query = (
            select(file.c.id, file.c.file_name, file.c.temp_name)
            .where(file.c.writer == name, file.c.status == CLOSING)
            .order_by(file.c.file_sequence_number)
        )
        pending = self._db(lambda conn: conn.execute(query).all())
        journaled: set[str] = set()
        for row in pending:
            temp, final = self.temp_folder / row.temp_name, self.directory / row.file_name
            if temp.exists():
                self._publish(row.temp_name, final)
                log.warning("CDR file writer %s: published %s after a restart", name, row.file_name)
            elif not final.exists():
                log.info("CDR file writer %s: %s was published and collected before a restart", name, row.file_name)
            self._mark(int(row.id), now)
            journaled.add(row.temp_name)
        self._in_doubt -= journaled
        keep = self._in_doubt | ({self._open.temp_name} if self._open is not None else set())
        for temp in self.temp_folder.glob(f"{name}-*.tmp"):
            if temp.name not in keep and temp.name not in journaled:
                log.warning(
                    "CDR file writer %s: dropping unfinished %s; its CDRs go into the next file", name, temp.name
                )
                temp.unlink(missing_ok=True)
        self._needs_recovery = False

    def _purge(self, now: float) -> None:
        horizon = now - self.settings.retention_days * 86400
        old = select(file.c.id).where(
            and_(file.c.writer == self.settings.writer_name, file.c.status == CLOSED, file.c.closed_at < horizon)
        )

        def purge(conn: Connection) -> None:
            conn.execute(delete(file_cdr).where(file_cdr.c.file_id.in_(old)))
            conn.execute(delete(file).where(file.c.id.in_(old)))

        self._db(purge)
        self._last_purge = now

    def _discard(self, current: _OpenFile) -> None:
        with contextlib.suppress(OSError):
            current.handle.close()
        self._delete_temp(current.temp_name)

    def _delete_temp(self, temp_name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.temp_folder / temp_name).unlink()

    def _abandon(self) -> None:
        """Drop the open file unjournaled (its CDRs stay in the outbox for whoever writes next)."""
        if self._open is not None:
            self._discard(self._open)
            self._open = None
