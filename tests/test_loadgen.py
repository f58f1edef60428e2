"""The load generator's quick look at an answer gives the Result-Code that the AVP objects give."""

from __future__ import annotations

import pytest

from bench.loadgen import result_code
from charging.diameter import Message


@pytest.mark.parametrize("code", [2001, 4012, 5030, 3004])
def test_result_code_is_the_one_the_message_carries(code: int) -> None:
    answer = Message(
        272,
        4,
        0,
        1,
        1,
        [
            ("Session-Id", "client.test;1"),
            ("Multiple-Services-Credit-Control", {"Rating-Group": 100, "Result-Code": 4012}),
            ("Result-Code", code),
            ("Origin-Host", "ocs.test"),
        ],
    )
    received = Message.decode(answer.to_bytes())
    assert result_code(received) == received.get("Result-Code") == code


def test_an_answer_without_result_code_gives_zero() -> None:
    answer = Message(272, 4, 0, 1, 1, [("Session-Id", "client.test;1"), ("Origin-Host", "ocs.test")])
    assert result_code(Message.decode(answer.to_bytes())) == 0
