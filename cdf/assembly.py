"""CDR assembly: one node's ACRs of one session in, its CDRs (TS 32.298 IMS records) out.  Pure.

An :class:`Assembler` keeps no state of its own.  ``apply(state, acr)`` takes the open
record of a node's session (or None) and the session's next ACR, and returns the record
as it now stands (None once closed) and the records the ACR closed:

* EVENT: a record of its own, opened and closed at once;
* START: opens a record (closing, as incomplete, one left open by a START that never saw its STOP);
* INTERIM: updates the record (parties, IOIs, a new entry in the media list when the SDP changed) and
  may close it as a partial record, opening the next with the next record sequence number;
* STOP: closes the record.

``on_timer(state, now)`` closes records the CDF must close itself: a session silent for longer than its
silence limit (a multiple of its Acct-Interim-Interval) is closed as incomplete, and a record open longer
than the configured maximum duration is closed as a partial.  ``now`` always comes from the caller.

A closed record becomes a ``charging.cdr.Cdr`` in :func:`build_cdr`, once the caller has given it its
local record sequence number.  Its ``cdr_id`` is ``cdr_id_for(node, session, partial number,
incarnation)`` where the incarnation is the Accounting-Record-Number of the ACR that opened the chain of
partial records: two chains of one node's session are opened by two different ACRs, so ids never collide.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, Literal

from pydantic import TypeAdapter

from cdf.acr import Acr, AcrType
from charging.cdr import (
    RECORD_TYPE_BY_NODE,
    ApplicationServerInformation,
    CauseForRecordClosing,
    Cdr,
    IncompleteCdrIndication,
    InterOperatorIdentifiers,
    MediaComponentsList,
    SdpMediaComponent,
    SubscriptionId,
    cdr_id_for,
)
from charging.clock import utc

STATE_VERSION = 1


@dataclass(slots=True)
class RecordState:
    """The open record of one node's session, as stored between its ACRs (JSON in cdf_record.state).

    A plain slotted dataclass rather than a pydantic model: the assembly sets its fields on every ACR.
    Lists are replaced, never changed in place, so that a closed partial record can share them.
    """

    node_address: str
    session_id: str
    incarnation: int  # Accounting-Record-Number of the ACR that opened this chain of partial records
    node_functionality: str
    opened_at: float  # when this (partial) record opened, on the node's time line
    opened_rx: float  # the same moment on the CDF clock
    last_event_at: float  # the last ACR's time on the node's time line
    last_acr_at: float  # the last ACR's arrival on the CDF clock
    role_of_node: str | None = None
    icid: str | None = None
    iois: list[InterOperatorIdentifiers] = field(default_factory=list)
    sip_method: str | None = None
    event: str | None = None
    calling_parties: list[str] = field(default_factory=list)
    called_party: str | None = None
    requested_parties: list[str] = field(default_factory=list)
    subscription_ids: list[SubscriptionId] = field(default_factory=list)
    user_name: str | None = None
    service_context_id: str | None = None
    service_request_time: float | None = None  # the session's first SIP request (the INVITE)
    service_start_time: float | None = None  # its first SIP response (the 200 OK)
    media: list[MediaComponentsList] = field(default_factory=list)  # media in force, then each change
    media_key: str = ""  # what the last media entry is, to compare an ACR's media without building it
    application_servers: list[ApplicationServerInformation] = field(default_factory=list)
    ims_communication_service_identifier: str | None = None
    access_network_information: list[str] = field(default_factory=list)
    cause_code: int | None = None
    extensions: dict[str, Any] = field(default_factory=dict)
    partial_seq: int = 1  # the record sequence number this record gets if the chain has partials
    changes: int = 0  # changes of media in this record
    acr_numbers: list[int] = field(default_factory=list)
    last_record_number: int = 0
    start_lost: bool = False
    interim_lost: bool = False
    interim_interval: int | None = None  # announced by the node in its ACRs
    state_version: int = STATE_VERSION

    def to_json(self) -> str:
        # Fields left out are None by default: exclude_none reads back the same and is faster than
        # exclude_defaults (9 us against 13 us), for a little more text.
        return _STATE_JSON.dump_json(self, exclude_none=True).decode()

    @classmethod
    def from_json(cls, data: str | bytes) -> RecordState:
        return _STATE_JSON.validate_json(data)

    def copy(self) -> RecordState:
        """A copy the assembly may change without touching this one.

        Shallow: the assembly replaces lists and dicts rather than changing them in place, so the two
        may share them.
        """
        return RecordState(*_STATE_FIELDS(self))


_STATE_JSON: TypeAdapter[RecordState] = TypeAdapter(RecordState)
# Every field in __init__ order: RecordState(*_STATE_FIELDS(state)) is a copy (3 us, against 13 us for replace).
_STATE_FIELDS = attrgetter(*(f.name for f in fields(RecordState)))


@dataclass(frozen=True, slots=True)
class AssemblyConfig:
    """What the assembly needs from cdf.settings.CdfSettings."""

    interim_interval: int = 0  # the Acct-Interim-Interval the CDF dictates in ACAs; 0: the node's own
    incomplete_multiple: float = 3.0
    incomplete_timeout: float = 7200.0
    interim_closes_partial: bool = True
    partial_max_duration: float = 0.0
    partial_max_changes: int = 0


@dataclass(frozen=True, slots=True)
class ClosedRecord:
    """A record the assembly closed; it becomes a CDR once it has its local record sequence number."""

    state: RecordState
    closure_time: float
    duration: float
    cause: CauseForRecordClosing
    record_sequence_number: int | None
    final: bool
    service_end_time: float | None = None
    stop_lost: bool = False

    @property
    def cdr_id(self) -> str:
        s = self.state
        return cdr_id_for(s.node_address, s.session_id, self.record_sequence_number, s.incarnation)


@dataclass(slots=True)
class Outcome:
    state: RecordState | None  # the record as it now stands; None when no record is open any more
    closed: list[ClosedRecord] = field(default_factory=list)


def _components(acr: Acr) -> list[SdpMediaComponent]:
    return [
        SdpMediaComponent(
            sdp_media_name=m.name,
            sdp_media_descriptions=list(m.descriptions),
            media_initiator_flag=m.initiator_flag,
            sdp_type=m.sdp_type,
        )
        for m in acr.media
    ]


class Assembler:
    def __init__(self, config: AssemblyConfig) -> None:
        self.config = config

    # -- ACRs ------------------------------------------------------------------------------------------
    def apply(self, state: RecordState | None, acr: Acr) -> Outcome:
        """The record after ``acr``; ``state`` is taken over (changed in place or replaced)."""
        kind = acr.record_type
        if kind is AcrType.EVENT:
            event_record = self._open(acr, start_lost=False)
            self._absorb(event_record, acr)
            return Outcome(state, [self._close_final(event_record, acr)])
        closed: list[ClosedRecord] = []
        if kind is AcrType.START:
            if state is not None:
                # A new START while the last one's record is open: that STOP never came.
                closed.append(self._close_incomplete(state, state.last_event_at))
            state = self._open(acr, start_lost=False)
        elif state is None:
            state = self._open(acr, start_lost=True)
        media_changed = self._absorb(state, acr)
        if kind is AcrType.STOP:
            closed.append(self._close_final(state, acr))
            return Outcome(None, closed)
        if kind is AcrType.INTERIM:
            cause = self._partial_trigger(state, acr, media_changed)
            if cause is not None:
                partial, state = self._close_partial(state, acr.time, acr.received_at, cause)
                closed.append(partial)
        return Outcome(state, closed)

    def _partial_trigger(self, state: RecordState, acr: Acr, media_changed: bool) -> CauseForRecordClosing | None:
        cfg = self.config
        if cfg.interim_closes_partial:
            # An INTERIM sent for a re-INVITE changes the service; a periodic one marks elapsed time.
            return CauseForRecordClosing.SERVICE_CHANGE if media_changed else CauseForRecordClosing.TIME_LIMIT
        if cfg.partial_max_changes and state.changes >= cfg.partial_max_changes:
            return CauseForRecordClosing.SERVICE_CHANGE
        if cfg.partial_max_duration and acr.time - state.opened_at >= cfg.partial_max_duration:
            return CauseForRecordClosing.TIME_LIMIT
        return None

    # -- time --------------------------------------------------------------------------------------------
    def silence_limit(self, state: RecordState) -> float:
        """How long the session may stay silent before the CDF closes it as incomplete."""
        interval = self.config.interim_interval or state.interim_interval or 0
        if interval > 0:
            return self.config.incomplete_multiple * interval
        return self.config.incomplete_timeout

    def due_at(self, state: RecordState) -> float:
        """When ``on_timer`` has something to do for this record (CDF clock)."""
        due = state.last_acr_at + self.silence_limit(state)
        if self.config.partial_max_duration:
            due = min(due, state.opened_rx + self.config.partial_max_duration)
        return due

    def on_timer(self, state: RecordState, now: float) -> Outcome:
        """Close what the clock says must be closed by ``now``."""
        if now >= state.last_acr_at + self.silence_limit(state):
            return Outcome(None, [self._close_incomplete(state, self._node_time(state, now))])
        limit = self.config.partial_max_duration
        if limit and now >= state.opened_rx + limit:
            closure = state.opened_at + limit
            partial, state = self._close_partial(state, closure, now, CauseForRecordClosing.TIME_LIMIT)
            return Outcome(state, [partial])
        return Outcome(state)

    @staticmethod
    def _node_time(state: RecordState, now: float) -> float:
        """``now`` (CDF clock) on the node's time line, by the offset seen at the last ACR."""
        return state.last_event_at + max(0.0, now - state.last_acr_at)

    # -- building blocks ---------------------------------------------------------------------------------
    @staticmethod
    def _open(acr: Acr, *, start_lost: bool) -> RecordState:
        return RecordState(
            node_address=acr.origin_host,
            session_id=acr.session_id,
            incarnation=acr.record_number,
            node_functionality=acr.node_functionality,
            opened_at=acr.time,
            opened_rx=acr.received_at,
            last_event_at=acr.time,
            last_acr_at=acr.received_at,
            last_record_number=acr.record_number,
            start_lost=start_lost,
        )

    @staticmethod
    def _absorb(state: RecordState, acr: Acr) -> bool:
        """Take what ``acr`` tells into the record; True when it changed the media."""
        if acr.record_number > state.last_record_number + 1 and state.acr_numbers:
            state.interim_lost = True
        if acr.record_number > state.last_record_number:
            state.last_record_number = acr.record_number
        state.acr_numbers = [*state.acr_numbers, acr.record_number]
        if acr.time > state.last_event_at:
            state.last_event_at = acr.time
        if acr.received_at > state.last_acr_at:
            state.last_acr_at = acr.received_at
        state.node_functionality = acr.node_functionality
        if acr.interim_interval is not None:
            state.interim_interval = acr.interim_interval
        if acr.role_of_node is not None:
            state.role_of_node = acr.role_of_node
        if acr.icid is not None:
            state.icid = acr.icid
        if acr.iois:
            known = {(i.originating_ioi, i.terminating_ioi) for i in state.iois}
            new = [pair for pair in acr.iois if pair not in known]
            if new:
                state.iois = [
                    *state.iois,
                    *(InterOperatorIdentifiers(originating_ioi=o, terminating_ioi=t) for o, t in dict.fromkeys(new)),
                ]
        if acr.sip_method is not None:
            state.sip_method = acr.sip_method
        if acr.event is not None:
            state.event = acr.event
        if acr.calling_parties:
            state.calling_parties = list(acr.calling_parties)
        if acr.called_party is not None:
            state.called_party = acr.called_party
        if acr.requested_parties:
            state.requested_parties = list(acr.requested_parties)
        if acr.subscription_ids and acr.subscription_ids != tuple(
            (s.subscription_id_type, s.subscription_id_data) for s in state.subscription_ids
        ):
            state.subscription_ids = [
                SubscriptionId(subscription_id_type=t, subscription_id_data=d) for t, d in acr.subscription_ids
            ]
        if acr.user_name is not None:
            state.user_name = acr.user_name
        if acr.service_context_id is not None:
            state.service_context_id = acr.service_context_id
        if state.service_request_time is None and acr.sip_request_time is not None:
            state.service_request_time = acr.sip_request_time
        if state.service_start_time is None and acr.sip_response_time is not None:
            state.service_start_time = acr.sip_response_time
        if acr.application_servers:
            known_servers = {
                (a.application_server, tuple(a.application_provided_called_parties)) for a in state.application_servers
            }
            for server in acr.application_servers:
                if (server.address, server.provided_called_parties) not in known_servers:
                    known_servers.add((server.address, server.provided_called_parties))
                    state.application_servers = [
                        *state.application_servers,
                        ApplicationServerInformation(
                            application_server=server.address,
                            application_provided_called_parties=list(server.provided_called_parties),
                        ),
                    ]
        if acr.ims_communication_service_identifier is not None:
            state.ims_communication_service_identifier = acr.ims_communication_service_identifier
        for info_text in acr.access_network_information:
            if info_text not in state.access_network_information:
                state.access_network_information = [*state.access_network_information, info_text]
        if acr.cause_code is not None:
            state.cause_code = acr.cause_code
        if acr.extensions:
            state.extensions = {**state.extensions, **acr.extensions}
        if not acr.media and not acr.sdp_session_descriptions:
            return False
        # A change of media is a change of the components or the session description, not of time stamps
        # or of the SDP's offer/answer role.
        key = repr((tuple((m.name, m.descriptions) for m in acr.media), acr.sdp_session_descriptions))
        if state.media and key == state.media_key:
            return False
        entry = MediaComponentsList(
            sip_request_timestamp=utc(acr.sip_request_time) if acr.sip_request_time is not None else None,
            sip_response_timestamp=utc(acr.sip_response_time) if acr.sip_response_time is not None else None,
            sdp_media_components=_components(acr),
            sdp_session_descriptions=list(acr.sdp_session_descriptions),
            media_initiator_flag=next((m.initiator_flag for m in acr.media if m.initiator_flag), None),
        )
        if state.media:
            state.changes += 1
        state.media = [*state.media, entry]
        state.media_key = key
        return True

    def _close_partial(
        self, state: RecordState, closure: float, now_rx: float, cause: CauseForRecordClosing
    ) -> tuple[ClosedRecord, RecordState]:
        """Close ``state`` as partial record number ``partial_seq`` and open the next one."""
        closure = max(closure, state.opened_at)
        closed = ClosedRecord(
            state=state,
            closure_time=closure,
            duration=closure - state.opened_at,
            cause=cause,
            record_sequence_number=state.partial_seq,
            final=False,
        )
        # The next partial starts with the media in force; lists are replaced, never shared in place.
        following = state.copy()
        following.media = state.media[-1:]
        following.acr_numbers = []
        following.changes = 0
        following.partial_seq = state.partial_seq + 1
        following.opened_at = closure
        following.opened_rx = max(now_rx, state.opened_rx)
        following.start_lost = False
        following.interim_lost = False
        return closed, following

    @staticmethod
    def _sequence_number(state: RecordState) -> int | None:
        # A chain without partials is one record, which carries no record sequence number.
        return state.partial_seq if state.partial_seq > 1 else None

    def _close_final(self, state: RecordState, acr: Acr) -> ClosedRecord:
        closure = max(acr.time, state.opened_at)
        cause = (
            CauseForRecordClosing.UNSUCCESSFUL_SERVICE_DELIVERY
            if state.cause_code is not None and state.cause_code >= 1  # TS 32.299 7.2.35: >= 1 are failures
            else CauseForRecordClosing.SERVICE_DELIVERY_END_SUCCESSFULLY
        )
        end = acr.sip_request_time if acr.sip_request_time is not None else acr.time
        return ClosedRecord(
            state=state,
            closure_time=closure,
            duration=closure - state.opened_at,
            cause=cause,
            record_sequence_number=self._sequence_number(state),
            final=True,
            service_end_time=end,
        )

    def _close_incomplete(self, state: RecordState, closure: float) -> ClosedRecord:
        closure = max(closure, state.opened_at)
        return ClosedRecord(
            state=state,
            closure_time=closure,
            # Only what the node reported counts: from the opening to its last ACR.
            duration=max(0.0, state.last_event_at - state.opened_at),
            cause=CauseForRecordClosing.MANAGEMENT_INTERVENTION,
            record_sequence_number=self._sequence_number(state),
            final=True,
            stop_lost=True,
        )


def _served_party(state: RecordState) -> str | None:
    if state.role_of_node == "ORIGINATING_ROLE":
        return state.calling_parties[0] if state.calling_parties else None
    if state.role_of_node == "TERMINATING_ROLE":
        if state.called_party:
            return state.called_party
        return state.requested_parties[0] if state.requested_parties else None
    return None


def _incomplete(closed: ClosedRecord) -> IncompleteCdrIndication | None:
    s = closed.state
    if not (s.start_lost or s.interim_lost or closed.stop_lost):
        return None
    interim: Literal["no", "yes", "unknown"] = "yes" if s.interim_lost else "no"
    if closed.stop_lost and not s.interim_lost:
        interim = "unknown"  # a silent session may have sent INTERIMs that never arrived
    return IncompleteCdrIndication(
        acr_start_lost=s.start_lost, acr_interim_lost=interim, acr_stop_lost=closed.stop_lost
    )


def build_cdr(closed: ClosedRecord, local_record_sequence_number: int, cdf_id: str) -> Cdr:
    """The CDR of a closed record (TS 32.298 5.1.3 field names, charging.cdr schema)."""
    s = closed.state
    return Cdr(
        cdr_id=closed.cdr_id,
        record_type=RECORD_TYPE_BY_NODE[s.node_functionality],
        node_functionality=s.node_functionality,
        role_of_node=s.role_of_node,
        node_address=s.node_address,
        session_id=s.session_id,
        ims_charging_identifier=s.icid,
        inter_operator_identifiers=s.iois,
        sip_method=s.sip_method,
        event=s.event,
        list_of_calling_party_address=s.calling_parties,
        called_party_address=s.called_party,
        requested_party_address=s.requested_parties,
        served_party=_served_party(s),
        list_of_subscription_id=s.subscription_ids,
        user_name=s.user_name,
        service_context_id=s.service_context_id,
        service_request_time_stamp=utc(s.service_request_time) if s.service_request_time is not None else None,
        service_delivery_start_time_stamp=utc(s.service_start_time) if s.service_start_time is not None else None,
        service_delivery_end_time_stamp=utc(closed.service_end_time) if closed.service_end_time is not None else None,
        record_opening_time=utc(s.opened_at),
        record_closure_time=utc(closed.closure_time),
        duration_seconds=closed.duration,
        cause_for_record_closing=closed.cause,
        local_record_sequence_number=local_record_sequence_number,
        record_sequence_number=closed.record_sequence_number,
        incomplete_cdr_indication=_incomplete(closed),
        cause_code=s.cause_code,
        list_of_sdp_media_components=s.media,
        application_servers_information=s.application_servers,
        ims_communication_service_identifier=s.ims_communication_service_identifier,
        access_network_information=s.access_network_information,
        accounting_record_numbers=s.acr_numbers,
        cdf_id=cdf_id,
        extensions=s.extensions,
    )
