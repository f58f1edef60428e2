"""The credit-control client of one SIP session (RFC 4006 sections 5 and 7, TS 32.299 SCUR), no I/O.

``CreditSession`` is the client state machine of RFC 4006 section 7 for session based credit control
with time units.  It is told what happens (the call was offered, answered, ended; a CCA came; Tx expired;
the OCF could not be reached; an ASR or RAR came; the time is ``now``) and answers with actions for its
driver: ``SendCcr`` (the CCR to build and send), ``Allow`` or ``Deny`` the INVITE, ``Teardown`` the call.

Time is counted in whole seconds of answered call.  What has been reported is kept as a running total,
and each report is the rounded time since the answer minus that total, so rounding never accumulates.
The current grant runs out ``granted`` seconds after the reported total, i.e. at
``answered_at + reported + granted``.  A CCR-U goes ``margin`` seconds before that (or
Time-Quota-Threshold seconds before, when the OCF asked for more notice, TS 32.299 7.2.218); a grant that
carried Final-Unit-Indication TERMINATE (RFC 4006 5.6.1) is not renewed but ends the call the moment it
is used up, and the CCR-T then reports at most the final units.  Validity-Time (RFC 4006 8.33) counts
from the CCA's arrival and forces a CCR-U with Reporting-Reason VALIDITY_TIME.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from charging.diameter.constants import ResultCode

# Credit-Control-Failure-Handling (RFC 4006 8.14)
TERMINATE = "TERMINATE"
CONTINUE = "CONTINUE"
RETRY_AND_TERMINATE = "RETRY_AND_TERMINATE"
CCFH_VALUES = {0: TERMINATE, 1: CONTINUE, 2: RETRY_AND_TERMINATE}

# Final-Unit-Action (RFC 4006 8.35)
FUA_TERMINATE = 0

# Reporting-Reason (TS 32.299 7.2.175)
THRESHOLD = 0
FINAL = 2
QUOTA_EXHAUSTED = 3
VALIDITY_TIME = 4
FORCED_REAUTHORISATION = 7

# Termination-Cause (RFC 6733 8.15)
LOGOUT = 1
SERVICE_NOT_PROVIDED = 2
BAD_ANSWER = 3
ADMINISTRATIVE = 4
LINK_BROKEN = 5
AUTH_EXPIRED = 6


class Kind(enum.IntEnum):
    INITIAL = 1
    UPDATE = 2
    TERMINATION = 3


class CcState(enum.Enum):
    IDLE = "Idle"
    PENDING_I = "PendingI"
    OPEN = "Open"
    PENDING_U = "PendingU"
    PENDING_T = "PendingT"
    CLOSED = "Closed"  # Idle again after the session, or credit control given up (CONTINUE)


@dataclass(slots=True, frozen=True)
class CreditAnswer:
    """What the client needs from a CCA (see ``charging.gwf.ro.parse_cca``)."""

    result_code: int
    granted_seconds: int | None = None  # None: the CCA granted no time quota (no limit)
    validity_time: int | None = None
    final_unit_action: int | None = None
    time_threshold: int | None = None
    failure_handling: str | None = None


@dataclass(slots=True, frozen=True)
class SendCcr:
    kind: Kind
    number: int
    used_seconds: int | None = None  # Used-Service-Unit CC-Time; None: no USU (CCR-I)
    reporting_reason: int | None = None
    request_units: bool = True  # a Requested-Service-Unit goes with it
    termination_cause: int | None = None
    retransmission: bool = False


@dataclass(slots=True, frozen=True)
class Allow:
    """Forward the INVITE."""


@dataclass(slots=True, frozen=True)
class Deny:
    """Answer the INVITE with ``status`` (402, 403 or 503) and do not forward it."""

    status: int
    result_code: int | None
    reason: str


@dataclass(slots=True, frozen=True)
class Teardown:
    """End the call: BYE to both legs (or CANCEL before an answer); a CCR-T follows when due."""

    reason: str
    termination_cause: int


Action = SendCcr | Allow | Deny | Teardown


@dataclass(slots=True)
class CreditConfig:
    requested_seconds: int | None = None  # CC-Time asked for in Requested-Service-Unit; None: empty RSU
    margin: float = 1.0  # seconds before the grant runs out that the CCR-U goes
    failure_handling: str = TERMINATE


def result_status(code: int) -> int:
    """The SIP status that tells the caller why credit control refused the session."""
    if code == ResultCode.DIAMETER_CREDIT_LIMIT_REACHED:
        return 402
    return 403  # 4010 END_USER_SERVICE_DENIED, 5030 USER_UNKNOWN, 5031 RATING_FAILED, and other refusals


@dataclass(slots=True)
class CreditSession:
    config: CreditConfig
    state: CcState = CcState.IDLE
    number: int = 0  # CC-Request-Number of the last CCR
    failure_handling: str = ""
    answered_at: float | None = None
    reported: int = 0  # seconds reported used so far
    granted: int | None = None  # seconds of the current grant (None: no limit)
    final: bool = False  # the current grant carries Final-Unit-Indication TERMINATE
    threshold: int = 0
    validity_deadline: float | None = None
    allowed: bool = False  # the INVITE was let through
    ended: bool = False  # the call is over (whoever ended it)
    termination_queued: int | None = None  # Termination-Cause of a CCR-T waiting for a pending answer
    tearing_down: bool = False
    pending_reason: int | None = None  # Reporting-Reason of the CCR-U in flight
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.failure_handling = self.failure_handling or self.config.failure_handling

    # -- events ------------------------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        """The initial INVITE arrived: CCR-I (RFC 4006 5.2)."""
        if self.state is not CcState.IDLE:
            return []
        self.state = CcState.PENDING_I
        return [SendCcr(Kind.INITIAL, 0, request_units=True)]

    def answered(self, now: float) -> list[Action]:
        """The call was answered (2xx): time starts to count."""
        if self.answered_at is not None:
            return []
        self.answered_at = now
        if self.state is CcState.OPEN and self.granted == 0 and self.final:
            return self._teardown("final units used", LOGOUT, now)
        return []

    def call_ended(self, now: float, cause: int = LOGOUT) -> list[Action]:
        """BYE or CANCEL from a user agent, or a failure response: CCR-T with the used time (RFC 4006 5.4)."""
        if self.ended:
            return []
        self.ended = True
        return self._terminate(now, cause)

    def answer(self, answer: CreditAnswer, now: float) -> list[Action]:
        """A CCA for the request in flight."""
        if answer.failure_handling:
            self.failure_handling = answer.failure_handling  # RFC 4006 8.14: the server's value wins
        state = self.state
        code = answer.result_code
        if state is CcState.PENDING_T:
            self.state = CcState.CLOSED
            return []
        if state not in (CcState.PENDING_I, CcState.PENDING_U):
            return []
        if 3000 <= code < 4000:  # protocol errors: the request failed (RFC 4006 5.7 "temporary error")
            return self.failed(now)
        if code == ResultCode.DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE:
            # RFC 4006 5.2 (4011): the service goes ahead without credit control.
            self.state = CcState.CLOSED
            return self._after_answer([] if self.allowed or self.ended else self._allow())
        if not 2000 <= code < 3000:
            return self._refused(code, now)
        self.state = CcState.OPEN
        self._grant(answer, now)
        actions: list[Action] = []
        if state is CcState.PENDING_I and not self.allowed and not self.ended:
            actions += self._allow()
        return self._after_answer(actions, now)

    def tx_expired(self, now: float) -> list[Action]:
        """Tx ran out with no answer (RFC 4006 section 7: 'Tx expired').  With CONTINUE or
        RETRY_AND_TERMINATE the service goes on while the request is retried; TERMINATE ends it."""
        if self.state is CcState.PENDING_I:
            if self.failure_handling == TERMINATE:
                self.state = CcState.CLOSED
                return self._deny_or_teardown(503, None, "credit control did not answer (Tx)", now)
            return [] if self.allowed or self.ended else self._allow()
        if self.state is CcState.PENDING_U:
            if self.failure_handling == TERMINATE:
                self.state = CcState.CLOSED
                return self._teardown("credit control did not answer (Tx)", LINK_BROKEN, now)
            return []
        if self.state is CcState.PENDING_T:
            self.state = CcState.CLOSED
        return []

    def failed(self, now: float) -> list[Action]:
        """The request could not be delivered or answered at all ('failure to send, or temporary error',
        RFC 4006 section 7): CONTINUE keeps the service without credit control; the others end it."""
        state = self.state
        if state is CcState.PENDING_T:
            self.state = CcState.CLOSED
            return []
        if state not in (CcState.PENDING_I, CcState.PENDING_U):
            return []
        self.state = CcState.CLOSED
        if self.failure_handling == CONTINUE:
            self.granted = None
            self.validity_deadline = None
            return [] if self.allowed or self.ended else self._allow()
        return self._deny_or_teardown(503, None, "credit control failed", now)

    def abort(self, now: float) -> list[Action]:
        """Abort-Session-Request (RFC 4006 5.5 with RFC 6733 8.5): end the call, then CCR-T."""
        if self.state in (CcState.IDLE, CcState.PENDING_T) or self.ended:
            return []
        return self._teardown("aborted by the OCF", ADMINISTRATIVE, now)  # no CCR-T once credit control is off

    def shutdown(self, now: float) -> list[Action]:
        """The GWF is stopping: the call cannot stay on a path that is going away, so it ends, and what was
        used is reported (Termination-Cause DIAMETER_ADMINISTRATIVE)."""
        if self.ended or self.state is CcState.IDLE:
            return []
        return self._teardown("service stopped", ADMINISTRATIVE, now)

    def reauth(self, now: float) -> list[Action]:
        """Re-Auth-Request (RFC 4006 5.5): a CCR-U reporting what was used, asking for a new grant."""
        if self.state is not CcState.OPEN or self.ended:
            return []
        return self._update(now, FORCED_REAUTHORISATION)

    def timer(self, now: float) -> list[Action]:
        if self.state is not CcState.OPEN or self.ended:
            return []
        end = self.quota_end()
        if end is not None and self.final and now >= end:
            return self._teardown("final units used", LOGOUT, now)
        if end is not None and not self.final and now >= end - self._notice():
            return self._update(now, THRESHOLD if self.threshold > self.config.margin else QUOTA_EXHAUSTED)
        if self.validity_deadline is not None and now >= self.validity_deadline:
            return self._update(now, VALIDITY_TIME)
        return []

    def next_deadline(self) -> float | None:
        if self.state is not CcState.OPEN or self.ended:
            return None
        deadlines = []
        end = self.quota_end()
        if end is not None:
            deadlines.append(end if self.final else end - self._notice())
        if self.validity_deadline is not None:
            deadlines.append(self.validity_deadline)
        return min(deadlines) if deadlines else None

    # -- arithmetic --------------------------------------------------------------------------------
    def quota_end(self) -> float | None:
        """When the current grant is used up (None before the answer, or with no limit)."""
        if self.answered_at is None or self.granted is None:
            return None
        return self.answered_at + self.reported + self.granted

    def used_since_report(self, now: float) -> int:
        if self.answered_at is None:
            return 0
        total = math.floor(max(0.0, now - self.answered_at) + 0.5)
        used = max(0, total - self.reported)
        if self.final and self.granted is not None:
            used = min(used, self.granted)  # the final units are all there is (RFC 4006 5.6.1)
        return used

    def _notice(self) -> float:
        return max(float(self.threshold), self.config.margin)

    # -- steps -------------------------------------------------------------------------------------
    def _grant(self, answer: CreditAnswer, now: float) -> None:
        self.granted = answer.granted_seconds
        # Final-Unit-Indication, or nothing granted at all: these are the last units (RFC 4006 5.6.1).
        self.final = answer.final_unit_action is not None or answer.granted_seconds == 0
        self.threshold = answer.time_threshold or 0
        self.validity_deadline = now + answer.validity_time if answer.validity_time else None

    def _after_answer(self, actions: list[Action], now: float | None = None) -> list[Action]:
        """A CCR-T queued while the answer was awaited goes now; a zero final grant ends the call."""
        if self.termination_queued is not None and now is not None and self.state is CcState.OPEN:
            cause = self.termination_queued
            self.termination_queued = None
            return actions + self._send_termination(now, cause)
        if self.termination_queued is not None and self.state is CcState.CLOSED:
            self.termination_queued = None
        if (
            now is not None
            and self.state is CcState.OPEN
            and self.answered_at is not None
            and not self.ended
            and (end := self.quota_end()) is not None
            and self.final
            and now >= end
        ):
            return actions + self._teardown("final units used", LOGOUT, now)
        return actions

    def _allow(self) -> list[Action]:
        self.allowed = True
        return [Allow()]

    def _refused(self, code: int, now: float) -> list[Action]:
        """A CCA with a failure Result-Code (4010, 4012, 5030, ...)."""
        self.state = CcState.CLOSED
        self.termination_queued = None
        return self._deny_or_teardown(result_status(code), code, f"Result-Code {code}", now)

    def _deny_or_teardown(self, status: int, code: int | None, reason: str, now: float) -> list[Action]:
        if self.ended:
            return []
        if not self.allowed:
            self.ended = True
            return [Deny(status, code, reason)]
        return self._teardown(reason, BAD_ANSWER if code else LINK_BROKEN, now)

    def _teardown(self, reason: str, cause: int, now: float) -> list[Action]:
        if self.ended:
            return []
        self.ended = True
        self.tearing_down = True
        return [Teardown(reason, cause), *self._terminate(now, cause)]

    def _terminate(self, now: float, cause: int) -> list[Action]:
        if self.state in (CcState.PENDING_I, CcState.PENDING_U):
            self.termination_queued = cause  # RFC 4006 section 7: queued until the answer
            return []
        if self.state is not CcState.OPEN:
            return []
        return self._send_termination(now, cause)

    def _send_termination(self, now: float, cause: int) -> list[Action]:
        used = self.used_since_report(now)
        self.reported += used
        self.number += 1
        self.state = CcState.PENDING_T
        return [SendCcr(Kind.TERMINATION, self.number, used, FINAL, request_units=False, termination_cause=cause)]

    def _update(self, now: float, reason: int) -> list[Action]:
        used = self.used_since_report(now)
        self.reported += used
        self.number += 1
        self.state = CcState.PENDING_U
        self.pending_reason = reason
        self.validity_deadline = None
        return [SendCcr(Kind.UPDATE, self.number, used, reason, request_units=True)]
