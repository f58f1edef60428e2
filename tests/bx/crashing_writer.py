"""A Bx file writer that dies by SIGKILL when the closing of its first file reaches a given step.

Run by test_crash.py as a child process:
    python -m tests.bx.crashing_writer URL SCHEMA FOLDER STEP MAX_RECORDS
STEP is one of the writer's checkpoints: appended, synced, journaled, renamed, marked.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from cdf.bx.writer import BxFileWriter
from charging.clock import ManualClock
from charging.db import make_engine
from tests.bx.factories import bx_settings


def main(argv: list[str]) -> None:
    url, schema, folder, step, max_records = argv

    def checkpoint(reached: str) -> None:
        if reached == step:
            print(f"killed at {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    engine = make_engine(url, schema=schema or None)
    settings = bx_settings(Path(folder), max_records=int(max_records))
    writer = BxFileWriter(engine, settings, owner="cdf-1", clock=ManualClock(), checkpoint=checkpoint)
    writer.run_once()
    writer.shutdown()
    print("finished without reaching the step", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
