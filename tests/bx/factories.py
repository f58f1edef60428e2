"""CDRs as the CDF closes them, and the outbox rows they sit in, for the Bx tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert

from cdf.bx.settings import BxSettings
from cdf.models import outbox
from charging.cdr import (
    ApplicationServerInformation,
    CauseForRecordClosing,
    Cdr,
    IncompleteCdrIndication,
    InterOperatorIdentifiers,
    MediaComponentsList,
    RecordType,
    SdpMediaComponent,
    SubscriptionId,
    cdr_id_for,
)

START = datetime(2026, 3, 15, 14, 30, 5, 250_000, tzinfo=UTC)
NODES = {
    RecordType.S_CSCF: "S_CSCF",
    RecordType.P_CSCF: "P_CSCF",
    RecordType.I_CSCF: "I_CSCF",
    RecordType.MRFC: "MRFC",
    RecordType.MGCF: "MGCF",
    RecordType.BGCF: "BGCF",
    RecordType.AS: "AS",
    RecordType.E_CSCF: "E_CSCF",
    RecordType.IBCF: "IBCF",
    RecordType.TRF: "TRF",
    RecordType.TF: "TF",
    RecordType.ATCF: "ATCF",
}


def make_cdr(number: int = 1, record_type: RecordType = RecordType.S_CSCF, **overrides: Any) -> Cdr:
    """A CDR with every field the Bx encoding carries filled in; ``number`` makes it distinct."""
    session_id = f"scscf.example.net;{number};1"
    node = "scscf.example.net"
    fields: dict[str, Any] = {
        "cdr_id": cdr_id_for(node, session_id, None),
        "record_type": record_type,
        "node_functionality": NODES[record_type],
        "role_of_node": "ORIGINATING_ROLE",
        "node_address": node,
        "session_id": session_id,
        "ims_charging_identifier": f"icid-{number}-0001@pcscf.example.net",
        "inter_operator_identifiers": [
            InterOperatorIdentifiers(originating_ioi="home.example.net", terminating_ioi="visited.example.org"),
            InterOperatorIdentifiers(originating_ioi="home.example.net"),
        ],
        "sip_method": "INVITE",
        "event": None,
        "list_of_calling_party_address": ["sip:alice@example.net", "tel:+4930123456"],
        "called_party_address": "sip:bob@example.org",
        "requested_party_address": ["tel:+4930654321"],
        "list_of_subscription_id": [
            SubscriptionId(subscription_id_type="END_USER_E164", subscription_id_data="4930123456")
        ],
        "user_name": "alice@example.net",
        "service_context_id": "32260@3gpp.org",
        "service_request_time_stamp": START,
        "service_delivery_start_time_stamp": START + timedelta(seconds=2, milliseconds=500),
        "service_delivery_end_time_stamp": START + timedelta(seconds=62),
        "record_opening_time": START,
        "record_closure_time": START + timedelta(seconds=62),
        "duration_seconds": 60.0,
        "cause_for_record_closing": CauseForRecordClosing.SERVICE_DELIVERY_END_SUCCESSFULLY,
        "local_record_sequence_number": number,
        "record_sequence_number": 2,
        "incomplete_cdr_indication": IncompleteCdrIndication(acr_start_lost=False, acr_interim_lost="unknown"),
        "list_of_sdp_media_components": [
            MediaComponentsList(
                sip_request_timestamp=START,
                sip_response_timestamp=START + timedelta(milliseconds=2500),
                sdp_media_components=[
                    SdpMediaComponent(
                        sdp_media_name="audio 49170 RTP/AVP 0 8",
                        sdp_media_descriptions=["a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000"],
                        media_initiator_flag="CALLED_PARTY",
                        sdp_type="SDP_ANSWER",
                    )
                ],
                sdp_session_descriptions=["v=0", "o=alice 2890844526 2890844526 IN IP4 192.0.2.10"],
            )
        ],
        "application_servers_information": [
            ApplicationServerInformation(
                application_server="sip:mmtel.example.net",
                application_provided_called_parties=["sip:carol@example.net"],
            )
        ],
        "ims_communication_service_identifier": "urn:urn-7:3gpp-service.ims.icsi.mmtel",
        "access_network_information": ["3GPP-E-UTRAN-FDD; utran-cell-id-3gpp=2620100010000101"],
        "cdf_id": "cdf-1",
    }
    fields.update(overrides)
    return Cdr(**fields)


def add_to_outbox(engine: Engine, cdrs: list[Cdr], *, created_at: float = 0.0) -> list[int]:
    """Put closed CDRs into the CDF outbox as the CDF does; their row ids, in order."""
    ids = []
    with engine.begin() as conn:
        for cdr in cdrs:
            ids.append(
                int(
                    conn.execute(
                        insert(outbox).values(**outbox_row(cdr, created_at)).returning(outbox.c.id)
                    ).scalar_one()
                )
            )
    return ids


def outbox_row(cdr: Cdr, created_at: float = 0.0) -> dict[str, Any]:
    return {
        "cdr_id": cdr.cdr_id,
        "partition_key": cdr.partition_key,
        "icid": cdr.ims_charging_identifier,
        "session_id": cdr.session_id,
        "node_address": cdr.node_address,
        "payload": cdr.to_json().decode(),
        "created_at": created_at,
    }


def bx_settings(directory: Path, **overrides: Any) -> BxSettings:
    values: dict[str, Any] = {"enabled": True, "directory": str(directory), "node_id": "cdf1", "poll_seconds": 0.05}
    values.update(overrides)
    return BxSettings(**values)
