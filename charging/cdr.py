"""The CDR schema shared by the CDF (producer) and billing (consumer), versioned.

One CDR is one node's record of one IMS session or event (TS 32.298 clause 5.1.3:
the S-CSCF, P-CSCF, I-CSCF, MRFC, MGCF, BGCF, AS, E-CSCF, IBCF ... records).  Field
names follow TS 32.298 in snake case.  ``cdr_id`` is stable: the same record of the
same node, session and partial sequence number always gets the same id, which is
what consumers deduplicate on.

Schema versions: a consumer accepts the versions it knows (``SUPPORTED_VERSIONS``)
and sends anything else to its dead-letter queue.  Version 1 is this module.
Published on Kafka as UTF-8 JSON, key = ICID (or Session-Id when there is none).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
_CDR_NAMESPACE = uuid.UUID("6f1d3c2a-5b8e-4c1f-9a7d-2e4b6c8d0a13")


class RecordType(enum.StrEnum):
    """TS 32.298 5.1.3.1 IMS record types (the IMSRecord CHOICE), by the node that writes them."""

    S_CSCF = "sCSCFRecord"
    P_CSCF = "pCSCFRecord"
    I_CSCF = "iCSCFRecord"
    MRFC = "mRFCRecord"
    MGCF = "mGCFRecord"
    BGCF = "bGCFRecord"
    AS = "aSRecord"
    E_CSCF = "eCSCFRecord"
    IBCF = "iBCFRecord"
    TRF = "tRFRecord"
    TF = "tFRecord"
    ATCF = "aTCFRecord"


# Node-Functionality (TS 32.299 7.2.118) enumerated name in the dictionary -> record type.
RECORD_TYPE_BY_NODE: dict[str, RecordType] = {
    "S_CSCF": RecordType.S_CSCF,
    "P_CSCF": RecordType.P_CSCF,
    "I_CSCF": RecordType.I_CSCF,
    "MRFC": RecordType.MRFC,
    "MGCF": RecordType.MGCF,
    "BGCF": RecordType.BGCF,
    "AS": RecordType.AS,
    "E_CSCF": RecordType.E_CSCF,
    "IBCF": RecordType.IBCF,
    "TRF": RecordType.TRF,
    "TF": RecordType.TF,
    "ATCF": RecordType.ATCF,
}


class CauseForRecordClosing(enum.StrEnum):
    """TS 32.298 IMSChargingDataTypes CauseForRecordClosing."""

    SERVICE_DELIVERY_END_SUCCESSFULLY = "serviceDeliveryEndSuccessfully"  # 0
    UNSUCCESSFUL_SERVICE_DELIVERY = "unSuccessfulServiceDelivery"  # 1
    TIME_LIMIT = "timeLimit"  # 3
    SERVICE_CHANGE = "serviceChange"  # 4: maximum number of changes of condition
    MANAGEMENT_INTERVENTION = "managementIntervention"  # 5: e.g. the CDF closed a silent session

    @property
    def asn1_value(self) -> int:
        return _CAUSE_NUMBERS[self]


_CAUSE_NUMBERS = {
    CauseForRecordClosing.SERVICE_DELIVERY_END_SUCCESSFULLY: 0,
    CauseForRecordClosing.UNSUCCESSFUL_SERVICE_DELIVERY: 1,
    CauseForRecordClosing.TIME_LIMIT: 3,
    CauseForRecordClosing.SERVICE_CHANGE: 4,
    CauseForRecordClosing.MANAGEMENT_INTERVENTION: 5,
}


class IncompleteCdrIndication(BaseModel):
    """TS 32.298 Incomplete-CDR-Indication: which ACRs the CDF never saw."""

    model_config = ConfigDict(frozen=True)

    acr_start_lost: bool = False
    acr_interim_lost: Literal["no", "yes", "unknown"] = "no"
    acr_stop_lost: bool = False


class SdpMediaComponent(BaseModel):
    model_config = ConfigDict(frozen=True)

    sdp_media_name: str | None = None
    sdp_media_descriptions: list[str] = Field(default_factory=list)
    media_initiator_flag: str | None = None
    sdp_type: str | None = None


class MediaComponentsList(BaseModel):
    """One entry of List-Of-SDP-Media-Components: the media as they stood from ``sip_request_timestamp``."""

    model_config = ConfigDict(frozen=True)

    sip_request_timestamp: datetime | None = None
    sip_response_timestamp: datetime | None = None
    sdp_media_components: list[SdpMediaComponent] = Field(default_factory=list)
    sdp_session_descriptions: list[str] = Field(default_factory=list)
    media_initiator_flag: str | None = None


class InterOperatorIdentifiers(BaseModel):
    model_config = ConfigDict(frozen=True)

    originating_ioi: str | None = None
    terminating_ioi: str | None = None


class ApplicationServerInformation(BaseModel):
    model_config = ConfigDict(frozen=True)

    application_server: str | None = None
    application_provided_called_parties: list[str] = Field(default_factory=list)


class SubscriptionId(BaseModel):
    model_config = ConfigDict(frozen=True)

    subscription_id_type: str  # END_USER_E164, END_USER_SIP_URI, ...
    subscription_id_data: str


class Cdr(BaseModel):
    """One IMS CDR (schema version 1)."""

    model_config = ConfigDict(frozen=True, use_enum_values=False)

    schema_version: Literal[1] = 1
    cdr_id: str
    record_type: RecordType
    node_functionality: str
    role_of_node: str | None = None
    node_address: str  # Origin-Host of the node that sent the ACRs
    session_id: str
    ims_charging_identifier: str | None = None
    inter_operator_identifiers: list[InterOperatorIdentifiers] = Field(default_factory=list)
    sip_method: str | None = None
    event: str | None = None
    list_of_calling_party_address: list[str] = Field(default_factory=list)
    called_party_address: str | None = None
    requested_party_address: list[str] = Field(default_factory=list)
    served_party: str | None = None  # the subscriber this record charges: caller if originating, else callee
    list_of_subscription_id: list[SubscriptionId] = Field(default_factory=list)
    user_name: str | None = None
    service_context_id: str | None = None
    service_request_time_stamp: datetime | None = None
    service_delivery_start_time_stamp: datetime | None = None
    service_delivery_end_time_stamp: datetime | None = None
    record_opening_time: datetime
    record_closure_time: datetime
    duration_seconds: float = Field(ge=0)
    cause_for_record_closing: CauseForRecordClosing
    local_record_sequence_number: int = Field(ge=0)
    record_sequence_number: int | None = Field(default=None, ge=0)  # partial record sequence number
    incomplete_cdr_indication: IncompleteCdrIndication | None = None
    cause_code: int | None = None
    list_of_sdp_media_components: list[MediaComponentsList] = Field(default_factory=list)
    application_servers_information: list[ApplicationServerInformation] = Field(default_factory=list)
    ims_communication_service_identifier: str | None = None
    access_network_information: list[str] = Field(default_factory=list)
    accounting_record_numbers: list[int] = Field(default_factory=list)  # the ACRs this record holds
    cdf_id: str = ""
    extensions: dict[str, Any] = Field(default_factory=dict)

    @field_validator("record_closure_time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("time stamps must carry a time zone")
        return value

    @model_validator(mode="after")
    def _times_in_order(self) -> Cdr:
        if self.record_closure_time < self.record_opening_time:
            raise ValueError("record_closure_time is before record_opening_time")
        return self

    @property
    def partition_key(self) -> str:
        return self.ims_charging_identifier or self.session_id

    @property
    def is_partial(self) -> bool:
        return self.record_sequence_number is not None

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_defaults=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Cdr:
        return cls.model_validate_json(data)


def cdr_id_for(node_address: str, session_id: str, record_sequence_number: int | None, incarnation: int = 0) -> str:
    """The stable id of a node's record of a session (one per partial record)."""
    sequence = "-" if record_sequence_number is None else str(record_sequence_number)
    name = f"{node_address.lower()}|{session_id}|{sequence}"
    if incarnation:
        name += f"|{incarnation}"
    return str(uuid.uuid5(_CDR_NAMESPACE, name))


def schema_version_of(payload: dict[str, Any]) -> int | None:
    version = payload.get("schema_version")
    return version if isinstance(version, int) else None
