"""The credit-control flow of one CCR over in-memory state (RFC 4006 sections 5 to 7).  No I/O.

``CreditControl.handle(book, request, now)`` decides the answer to one request and
changes the accounts, buckets and sessions of the ``Book`` it is given, noting what it
touched and the ledger entries it made; the store loads the book from the database
before and writes it back after, in the same transaction.  Duplicate requests never
reach this module: the store answers them from the stored answers.

Result codes follow the server state machine of RFC 4006 section 7: an update or
termination that cannot be processed still debits the units reported used, and leaves
the session closed; a failed initial request leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charging.diameter.constants import CcRequestType, ResultCode
from ocf.credit import (
    Account,
    Bucket,
    Quota,
    Session,
    pick_bucket,
    quota_key,
    release,
    reserve,
    settle,
    size_request,
    start_segment,
    threshold,
)
from ocf.rating import UNIT_MONEY, UNIT_OCTETS, UNIT_TIME, UNIT_UNITS, Catalog, RatingError, Tariff
from ocf.settings import OcfSettings

# Requested-Action (RFC 4006 8.41)
DIRECT_DEBITING = 0
REFUND_ACCOUNT = 1
CHECK_BALANCE = 2
PRICE_ENQUIRY = 3

ENOUGH_CREDIT = 0
NO_CREDIT = 1

SUCCESS = int(ResultCode.DIAMETER_SUCCESS)


@dataclass(frozen=True, slots=True)
class Units:
    unit: str  # time | octets | units | money
    amount: int
    currency: int | None = None  # money only


@dataclass(slots=True)
class ServiceUse:
    """One Multiple-Services-Credit-Control of a CCR, or the command level of a single-service CCR."""

    rating_group: int | None = None
    service_identifier: int | None = None
    requested: Units | None = None  # None with ``requested_present``: an empty Requested-Service-Unit
    requested_present: bool = False
    used: list[Units] = field(default_factory=list)
    reporting_reasons: list[int] = field(default_factory=list)


@dataclass(slots=True)
class CreditRequest:
    session_id: str
    request_type: int
    request_number: int
    origin_host: str = ""
    origin_realm: str = ""
    service_context: str = ""
    subscription_ids: list[tuple[int, str]] = field(default_factory=list)
    requested_action: int | None = None
    destination: str = ""
    services: list[ServiceUse] = field(default_factory=list)
    multiple_services: bool = False  # the CCR used Multiple-Services-Credit-Control
    retransmit: bool = False
    icid: str = ""  # IMS-Charging-Identifier, for logs


@dataclass(slots=True)
class ServiceResult:
    rating_group: int | None
    service_identifier: int | None
    result_code: int
    granted: Units | None = None
    validity_time: int | None = None
    final: bool = False
    threshold: int = 0
    note: str = ""  # why a service was refused, for the log


@dataclass(slots=True)
class CreditAnswer:
    result_code: int
    services: list[ServiceResult] = field(default_factory=list)
    multiple_services: bool = False
    cost: int | None = None  # Cost-Information, minor units of ``currency``
    currency: int | None = None
    check_balance: int | None = None
    low_balance: bool | None = None
    remaining_balance: int | None = None
    validity_time: int | None = None  # command level, when no grant carries one
    error_message: str | None = None
    account_id: int | None = None  # for logs
    session_closed: bool = False


@dataclass(slots=True)
class LedgerEntry:
    account_id: int
    at: float
    kind: str  # debit | refund | release
    amount: int
    balance_after: int
    units: int | None = None
    unit: str | None = None
    bucket_id: int | None = None
    uncollected: int = 0
    session_id: str | None = None
    request_number: int | None = None
    rating_group: int | None = None
    service_identifier: int | None = None
    note: str = ""


@dataclass(slots=True)
class Book:
    """The state one batch of requests works on, and what it changed."""

    catalog: Catalog
    accounts: dict[int, Account] = field(default_factory=dict)
    buckets: dict[int, list[Bucket]] = field(default_factory=dict)  # by account
    sessions: dict[str, Session] = field(default_factory=dict)
    subscribers: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)  # id -> (subscriber, account)
    ledger: list[LedgerEntry] = field(default_factory=list)
    touched_accounts: set[int] = field(default_factory=set)
    touched_buckets: set[int] = field(default_factory=set)
    touched_sessions: set[str] = field(default_factory=set)
    refused_accounts: set[int] = field(default_factory=set)  # a grant was refused for lack of credit


def close_session(book: Book, account: Account, session: Session, now: float, state: str) -> None:
    """End ``session``: whatever its quotas still hold goes back to the account, undebited."""
    buckets = book.buckets.get(account.id, [])
    for quota in session.quotas.values():
        if quota.bucket_id is not None:
            book.touched_buckets.add(quota.bucket_id)
        release(account, buckets, quota)
    book.touched_accounts.add(account.id)
    book.touched_sessions.add(session.session_id)
    session.state = state
    session.closed_at = now
    session.updated_at = now
    session.pending_action = None


def release_session(book: Book, account: Account, session: Session, now: float, state: str, why: str) -> None:
    """Close ``session`` without a debit (Tcc expiry, a client that no longer knows it) and put the release
    in the account's ledger, saying ``why``."""
    released = session.reserved
    close_session(book, account, session, now, state)
    book.ledger.append(
        LedgerEntry(
            account_id=account.id,
            at=now,
            kind="release",
            amount=0,
            balance_after=account.balance,
            session_id=session.session_id,
            note=f"{why}: {released} reserved released",
        )
    )


class Refusal(Exception):
    """A request answered with a failure Result-Code before any state changed."""

    def __init__(self, result_code: int, message: str) -> None:
        super().__init__(message)
        self.result_code = result_code


class CreditControl:
    def __init__(self, settings: OcfSettings) -> None:
        self.settings = settings
        self._grants = {
            UNIT_TIME: settings.grant_seconds,
            UNIT_OCTETS: settings.grant_octets,
            UNIT_UNITS: settings.grant_units,
            UNIT_MONEY: settings.grant_money,
        }
        self._rg_grants = {int(k): v for k, v in settings.rating_group_grants.items()}

    @property
    def tcc(self) -> int:
        return self.settings.validity_time_seconds + self.settings.tcc_margin_seconds

    def handle(self, book: Book, req: CreditRequest, now: float) -> CreditAnswer:
        try:
            if req.request_type == CcRequestType.INITIAL:
                return self._initial(book, req, now)
            if req.request_type == CcRequestType.UPDATE:
                return self._update(book, req, now)
            if req.request_type == CcRequestType.TERMINATION:
                return self._terminate(book, req, now)
            return self._event(book, req, now)
        except Refusal as refusal:
            multiple = req.multiple_services
            return CreditAnswer(refusal.result_code, multiple_services=multiple, error_message=str(refusal))

    # -- lookups --------------------------------------------------------------------------------
    def _subscriber(self, book: Book, req: CreditRequest) -> tuple[int, Account]:
        for id_type, id_data in req.subscription_ids:
            found = book.subscribers.get((id_type, id_data))
            if found is not None:
                subscriber_id, account_id = found
                return subscriber_id, book.accounts[account_id]
        if not req.subscription_ids:
            raise Refusal(ResultCode.DIAMETER_USER_UNKNOWN, "no Subscription-Id")
        raise Refusal(ResultCode.DIAMETER_USER_UNKNOWN, "subscriber unknown")

    def _tariff(self, book: Book, account: Account, use: ServiceUse, destination: str, now: float) -> Tariff:
        tariff = book.catalog.select(use.rating_group, use.service_identifier, destination, now)
        if tariff.currency != account.currency:
            raise RatingError(f"tariff {tariff.name} is in currency {tariff.currency}, the account {account.currency}")
        return tariff

    def _grant_size(self, unit: str, rating_group: int | None) -> int:
        if rating_group is not None and rating_group in self._rg_grants:
            return self._rg_grants[rating_group]
        return self._grants[unit]

    # -- session-based credit control -------------------------------------------------------------
    def _initial(self, book: Book, req: CreditRequest, now: float) -> CreditAnswer:
        if req.session_id in book.sessions:
            # A new request number on a Session-Id already in use: not a repeat (those are answered
            # from the store), and not a session start either.
            raise Refusal(ResultCode.DIAMETER_UNABLE_TO_COMPLY, "session already exists")
        subscriber_id, account = self._subscriber(book, req)
        if account.blocked:
            raise Refusal(ResultCode.DIAMETER_END_USER_SERVICE_DENIED, "account blocked")
        session = Session(
            session_id=req.session_id,
            account_id=account.id,
            subscriber_id=subscriber_id,
            origin_host=req.origin_host,
            origin_realm=req.origin_realm,
            service_context=req.service_context,
            destination=req.destination,
            request_number=req.request_number,
            created_at=now,
            updated_at=now,
            expires_at=now + self.tcc,
            is_new=True,
        )
        uses = req.services or [ServiceUse(requested_present=True)]
        results = [self._grant(book, account, session, use, now) for use in uses]
        answer = self._answer(book, req, account, session, results)
        if answer.result_code != SUCCESS:
            for quota in session.quotas.values():
                release(account, book.buckets.get(account.id, []), quota)
            return answer
        book.sessions[session.session_id] = session
        book.touched_sessions.add(session.session_id)
        return answer

    def _update(self, book: Book, req: CreditRequest, now: float) -> CreditAnswer:
        session = self._open_session(book, req)
        account = book.accounts[session.account_id]
        # RFC 4006 5.1.2: updates sent while others are pending may arrive out of sequence; the
        # server SHOULD NOT treat that as an error and answers each.  Repeats never get here.
        session.request_number = max(session.request_number, req.request_number)
        session.updated_at = now
        book.touched_sessions.add(session.session_id)
        if account.blocked:
            self._report_all(book, account, session, req, now)
            close_session(book, account, session, now, "closed")
            answer = self._answer(book, req, account, session, [])
            answer.result_code = ResultCode.DIAMETER_END_USER_SERVICE_DENIED
            answer.error_message = "account blocked"
            return answer
        results: list[ServiceResult] = []
        for use in req.services or [ServiceUse()]:
            key = quota_key(use.rating_group, use.service_identifier)
            if use.used or (use.requested_present and key in session.quotas):
                self._report(book, account, session, use, req, now)
            if use.requested_present:
                results.append(self._grant(book, account, session, use, now))
            else:
                # RFC 4006 5.6.2: no rating AVPs after the final units: debit, grant nothing, give Validity-Time.
                validity = self.settings.validity_time_seconds
                results.append(ServiceResult(use.rating_group, use.service_identifier, SUCCESS, validity_time=validity))
        session.expires_at = now + self.tcc  # Tcc restarts with every update (RFC 4006 7, server)
        answer = self._answer(book, req, account, session, results)
        if req.multiple_services:
            # Each service has its own Result-Code (RFC 4006 5.1.2): a refused quota does not end the session,
            # the client decides and sends CCR-Terminate.
            answer.result_code = SUCCESS
        elif answer.result_code != SUCCESS:
            # RFC 4006 7: an update not successfully processed debits the used units and ends the session.
            close_session(book, account, session, now, "closed")
            answer.session_closed = True
        return answer

    def _terminate(self, book: Book, req: CreditRequest, now: float) -> CreditAnswer:
        session = self._open_session(book, req)
        account = book.accounts[session.account_id]
        session.request_number = max(session.request_number, req.request_number)
        self._report_all(book, account, session, req, now)
        close_session(book, account, session, now, "closed")
        answer = self._answer(book, req, account, session, [])
        answer.session_closed = True
        return answer

    def _open_session(self, book: Book, req: CreditRequest) -> Session:
        session = book.sessions.get(req.session_id)
        if session is None or session.state != "open":
            raise Refusal(ResultCode.DIAMETER_UNKNOWN_SESSION_ID, "no open credit-control session with this Session-Id")
        return session

    def _grant(self, book: Book, account: Account, session: Session, use: ServiceUse, now: float) -> ServiceResult:
        rg, si = use.rating_group, use.service_identifier
        requested = use.requested
        unit = requested.unit if requested is not None else None
        tariff: Tariff | None = None
        try:
            if unit == UNIT_MONEY:
                if requested is not None and requested.currency not in (None, account.currency):
                    raise RatingError("requested money in another currency than the account's")
            else:
                tariff = self._tariff(book, account, use, session.destination, now)
                if unit is None:
                    unit = tariff.unit
                elif unit != tariff.unit:
                    raise RatingError(f"requested {unit}, rated in {tariff.unit}")
        except RatingError as exc:
            return ServiceResult(rg, si, ResultCode.DIAMETER_RATING_FAILED, note=str(exc))
        if tariff is not None and tariff.is_free:
            return ServiceResult(rg, si, ResultCode.DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE, note="free of charge")
        key = quota_key(rg, si)
        quota = session.quotas.get(key)
        if quota is None:
            quota = Quota(rg, si, unit)
        elif quota.unit != unit:
            return ServiceResult(rg, si, ResultCode.DIAMETER_RATING_FAILED, note=f"unit changed from {quota.unit}")
        start_segment(quota, tariff)
        want = size_request(requested.amount if requested is not None else None, self._grant_size(unit, rg))
        buckets = book.buckets.get(account.id, [])
        grant = reserve(account, buckets, quota, tariff, want, now)
        session.quotas[key] = quota
        book.touched_accounts.add(account.id)
        if grant.bucket_id is not None:
            book.touched_buckets.add(grant.bucket_id)
        if grant.units == 0:
            book.refused_accounts.add(account.id)
            return ServiceResult(rg, si, ResultCode.DIAMETER_CREDIT_LIMIT_REACHED, note="no credit left")
        return ServiceResult(
            rg,
            si,
            SUCCESS,
            granted=Units(unit, grant.units, account.currency if unit == UNIT_MONEY else None),
            validity_time=self.settings.validity_time_seconds,
            final=grant.final,
            threshold=threshold(grant.units, self.settings.quota_threshold_percent),
        )

    def _report(
        self, book: Book, account: Account, session: Session, use: ServiceUse, req: CreditRequest, now: float
    ) -> None:
        """Debit what ``use`` reports used and release the rest of its quota's reservation."""
        key = quota_key(use.rating_group, use.service_identifier)
        quota = session.quotas.get(key)
        tariff: Tariff | None = None
        if quota is None:
            # Usage of a service that holds no quota: priced like any other, from the free credit only.
            if not use.used:
                return
            unit = use.used[0].unit
            if unit != UNIT_MONEY:
                try:
                    tariff = self._tariff(book, account, use, session.destination, now)
                except RatingError:
                    return  # nothing can price it; the request's own grant (if any) answers 5031
                unit = tariff.unit
            quota = Quota(use.rating_group, use.service_identifier, unit)
            start_segment(quota, tariff)
            session.quotas[key] = quota
        elif quota.tariff_id is not None:
            tariff = book.catalog.by_id.get(quota.tariff_id)
        used = sum(u.amount for u in use.used if u.unit == quota.unit)
        buckets = book.buckets.get(account.id, [])
        held_bucket = quota.bucket_id
        outcome = settle(account, buckets, quota, tariff, used)
        book.touched_accounts.add(account.id)
        if held_bucket is not None:
            book.touched_buckets.add(held_bucket)
        session.cost += outcome.debited
        if outcome.units or outcome.debited or outcome.uncollected:
            book.ledger.append(
                LedgerEntry(
                    account_id=account.id,
                    at=now,
                    kind="debit",
                    amount=-outcome.debited,
                    balance_after=account.balance,
                    units=outcome.units,
                    unit=quota.unit,
                    bucket_id=outcome.bucket_id,
                    uncollected=outcome.uncollected,
                    session_id=session.session_id,
                    request_number=req.request_number,
                    rating_group=use.rating_group,
                    service_identifier=use.service_identifier,
                    note=f"{outcome.bucket_units} from bucket" if outcome.bucket_units else "",
                )
            )

    def _report_all(self, book: Book, account: Account, session: Session, req: CreditRequest, now: float) -> None:
        for use in req.services:
            if use.used:
                self._report(book, account, session, use, req, now)

    def _answer(
        self,
        book: Book,
        req: CreditRequest,
        account: Account,
        session: Session | None,
        results: list[ServiceResult],
    ) -> CreditAnswer:
        succeeded = not results or any(r.result_code == SUCCESS for r in results)
        code = SUCCESS if succeeded else results[0].result_code
        answer = CreditAnswer(code, results, req.multiple_services, account_id=account.id)
        if self.settings.cost_information and session is not None and req.request_type != CcRequestType.INITIAL:
            answer.cost = session.cost
            answer.currency = account.currency
        self._balance_notes(account, answer)
        return answer

    def _balance_notes(self, account: Account, answer: CreditAnswer) -> None:
        limit = account.low_balance_threshold
        if limit is None:
            limit = self.settings.low_balance_threshold
        if limit > 0:
            answer.low_balance = account.free < limit
            answer.remaining_balance = account.free
            answer.currency = account.currency

    # -- one-time events (RFC 4006 section 6) ------------------------------------------------------
    def _event(self, book: Book, req: CreditRequest, now: float) -> CreditAnswer:
        action = req.requested_action
        uses = req.services or [ServiceUse()]
        if action == PRICE_ENQUIRY:
            return self._price_enquiry(book, req, uses, now)
        _, account = self._subscriber(book, req)
        if action == REFUND_ACCOUNT:
            return self._refund(book, req, account, uses, now)
        if account.blocked:
            raise Refusal(ResultCode.DIAMETER_END_USER_SERVICE_DENIED, "account blocked")
        priced = [self._price(book, account, req, use, now) for use in uses]
        buckets = book.buckets.get(account.id, [])
        plan: list[tuple[ServiceUse, Units, int, Bucket | None]] = []
        money = 0
        for use, (units, cost) in zip(uses, priced, strict=True):
            bucket = None
            if units.unit != UNIT_MONEY:
                bucket = pick_bucket(buckets, units.unit, use.rating_group, now)
                if bucket is not None and bucket.free < units.amount:
                    bucket = None
            plan.append((use, units, cost, bucket))
            money += 0 if bucket is not None else cost
        enough = money <= account.free
        if action == CHECK_BALANCE:
            answer = CreditAnswer(SUCCESS, [], req.multiple_services, account_id=account.id)
            answer.check_balance = ENOUGH_CREDIT if enough else NO_CREDIT
            self._balance_notes(account, answer)
            return answer
        if action != DIRECT_DEBITING:
            raise Refusal(ResultCode.DIAMETER_INVALID_AVP_VALUE, f"Requested-Action {action} unknown")
        if not enough:
            # RFC 4006 6.3 / 9.1: 4012 tells a client with DDFH TERMINATE_OR_BUFFER that nothing was debited.
            book.refused_accounts.add(account.id)
            refused = ResultCode.DIAMETER_CREDIT_LIMIT_REACHED
            results = [ServiceResult(u.rating_group, u.service_identifier, refused) for u in uses]
            answer = CreditAnswer(refused, results, req.multiple_services, account_id=account.id)
            self._balance_notes(account, answer)
            return answer
        results = []
        total = 0
        for use, units, cost, bucket in plan:
            if bucket is not None:
                bucket.amount -= units.amount
                book.touched_buckets.add(bucket.id)
                cost = 0
            account.balance -= cost
            total += cost
            book.ledger.append(
                LedgerEntry(
                    account_id=account.id,
                    at=now,
                    kind="debit",
                    amount=-cost,
                    balance_after=account.balance,
                    units=units.amount,
                    unit=units.unit,
                    bucket_id=bucket.id if bucket is not None else None,
                    session_id=req.session_id,
                    request_number=req.request_number,
                    rating_group=use.rating_group,
                    service_identifier=use.service_identifier,
                    note="direct debit",
                )
            )
            results.append(ServiceResult(use.rating_group, use.service_identifier, SUCCESS, granted=units))
        book.touched_accounts.add(account.id)
        answer = CreditAnswer(SUCCESS, results, req.multiple_services, account_id=account.id)
        if self.settings.cost_information:
            answer.cost = total
            answer.currency = account.currency
        self._balance_notes(account, answer)
        return answer

    def _price(
        self, book: Book, account: Account, req: CreditRequest, use: ServiceUse, now: float
    ) -> tuple[Units, int]:
        """The units an event asks for (one service unit when it names none) and what they cost."""
        requested = use.requested
        if requested is not None and requested.unit == UNIT_MONEY:
            if requested.currency not in (None, account.currency):
                raise Refusal(ResultCode.DIAMETER_RATING_FAILED, "money in another currency than the account's")
            return Units(UNIT_MONEY, requested.amount, account.currency), requested.amount
        try:
            tariff = self._tariff(book, account, use, req.destination, now)
        except RatingError as exc:
            raise Refusal(ResultCode.DIAMETER_RATING_FAILED, str(exc)) from None
        if requested is None:
            amount = 1
        elif requested.unit != tariff.unit:
            raise Refusal(ResultCode.DIAMETER_RATING_FAILED, f"requested {requested.unit}, rated in {tariff.unit}")
        else:
            amount = requested.amount
        if tariff.is_free:
            raise Refusal(ResultCode.DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE, "service free of charge")
        return Units(tariff.unit, amount), tariff.charge(amount)

    def _refund(
        self, book: Book, req: CreditRequest, account: Account, uses: list[ServiceUse], now: float
    ) -> CreditAnswer:
        total = 0
        for use in uses:
            units, amount = self._price(book, account, req, use, now)
            account.balance += amount
            total += amount
            book.ledger.append(
                LedgerEntry(
                    account_id=account.id,
                    at=now,
                    kind="refund",
                    amount=amount,
                    balance_after=account.balance,
                    units=units.amount,
                    unit=units.unit,
                    session_id=req.session_id,
                    request_number=req.request_number,
                    rating_group=use.rating_group,
                    service_identifier=use.service_identifier,
                    note="refund",
                )
            )
        book.touched_accounts.add(account.id)
        answer = CreditAnswer(SUCCESS, [], req.multiple_services, account_id=account.id)
        if self.settings.cost_information:
            answer.cost = total
            answer.currency = account.currency
        self._balance_notes(account, answer)
        return answer

    def _price_enquiry(self, book: Book, req: CreditRequest, uses: list[ServiceUse], now: float) -> CreditAnswer:
        if req.subscription_ids:
            _, account = self._subscriber(book, req)
        else:
            account = Account(0, self.settings.default_currency, 0)
        total = sum(self._price(book, account, req, use, now)[1] for use in uses)
        return CreditAnswer(
            SUCCESS, [], req.multiple_services, cost=total, currency=account.currency, account_id=account.id or None
        )
