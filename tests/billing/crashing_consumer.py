"""A billing consumer that stores what it polls and then dies by SIGKILL before committing any offset.

Run by test_consumer.py as a child process:
    python -m tests.billing.crashing_consumer URL SCHEMA BOOTSTRAP TOPIC GROUP COUNT SESSION_TIMEOUT_MS
"""

from __future__ import annotations

import os
import signal
import sys

from billing.consumer import BillingConsumer
from billing.settings import BillingSettings
from charging.db import make_engine


def main(argv: list[str]) -> None:
    url, schema, bootstrap, topic, group, count, session_timeout_ms = argv
    engine = make_engine(url, schema=schema or None)
    settings = BillingSettings(consumer_group=group, poll_timeout_ms=100, session_timeout_ms=int(session_timeout_ms))
    consumer = BillingConsumer(
        engine, bootstrap=bootstrap, topic=topic, dead_letter_topic=f"{topic}.dead", settings=settings, name="doomed"
    )
    consumer.open()
    stored = 0
    while stored < int(count):
        batch = consumer.poll_batch()
        if batch.size:
            outcome = consumer.store(batch)  # the database transaction commits here ...
            stored += outcome.stored if outcome else 0
    print(f"stored {stored}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the offset commit never happens


if __name__ == "__main__":
    main(sys.argv[1:])
