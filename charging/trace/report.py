"""Replay results for people (a readable diff) and for CI systems (JUnit XML).

Neither carries wall-clock durations: the same trace against the same target gives
the same report, octet for octet, on every run.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable

from charging.trace.replay import ReplayResult


def text_report(result: ReplayResult, verbose: bool = False) -> str:
    lines = [f"replay of {result.trace_name}"]
    for case in result.cases:
        if case.passed:
            if verbose:
                lines.append(f"  ok    {case.name}")
                lines += [f"        note: {n}" for n in case.notes]
            continue
        lines.append(f"  FAIL  {case.name}")
        if case.error:
            lines.append(f"        {case.error}")
        for diff in case.differences:
            lines.append(f"        {diff}")
    failed = len(result.failures)
    total = len(result.cases)
    verdict = "passed" if failed == 0 else "FAILED"
    lines.append(f"{result.trace_name}: {total} cases, {failed} failed: {verdict}")
    return "\n".join(lines) + "\n"


def junit_xml(results: Iterable[ReplayResult]) -> bytes:
    """One testsuite per trace, one testcase per replayed step; failures carry the diff."""
    suites = ET.Element("testsuites", name="charging replay")
    total = failures = 0
    for result in results:
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=result.trace_name,
            tests=str(len(result.cases)),
            failures=str(len(result.failures)),
            errors="0",
            skipped="0",
        )
        total += len(result.cases)
        failures += len(result.failures)
        for case in result.cases:
            testcase = ET.SubElement(suite, "testcase", classname=result.trace_name, name=case.name)
            if not case.passed:
                first = case.error or str(case.differences[0])
                failure = ET.SubElement(
                    testcase, "failure", message=first, type="mismatch" if not case.error else "error"
                )
                failure.text = case.failure_text()
            if case.notes:
                ET.SubElement(testcase, "system-out").text = "\n".join(case.notes)
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    ET.indent(suites)
    data: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return data + b"\n"
