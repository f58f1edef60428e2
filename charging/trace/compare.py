"""What a replay compares, and the differences it reports, with no I/O.

Everything compared is a JSON tree: an answer's AVPs (``display.avp_tree``), a CDR
(its JSON form), a balance.  A difference names the path to the field, AVP names
joined by ``/`` with ``[i]`` for the i-th instance of a repeated AVP (from 1), and
shows the expected and the actual value.

Rules say what may differ.  A pattern without ``/`` names a field anywhere
(``Event-Timestamp``); one with ``/`` names a path from the top
(``Multiple-Services-Credit-Control/Validity-Time``); ``*`` matches within one
step.  ``ignore`` patterns are skipped; a ``compare`` pattern brings back a field
that a default rule ignores.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from charging.diameter.dictionary import DICTIONARY

# Fields that differ from run to run, or between a lab and CI, without meaning anything.
DEFAULT_IGNORED_AVPS = ("Origin-State-Id", "Event-Timestamp")
DEFAULT_IGNORED_CDR_FIELDS = (
    "cdr_id",
    "cdf_id",
    "local_record_sequence_number",
    "record_opening_time",
    "record_closure_time",
    "service_request_time_stamp",
    "service_delivery_start_time_stamp",
    "service_delivery_end_time_stamp",
    "sip_request_timestamp",
    "sip_response_timestamp",
)


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()


@dataclass(frozen=True, slots=True)
class Difference:
    where: str  # "answer", "cdr <key>", "balance alice", "request", ...
    path: str
    expected: Any
    actual: Any
    text: str = ""  # says it in words instead of expected/got, e.g. "missing" or "unexpected"

    def __str__(self) -> str:
        at = f"{self.where} {self.path}" if self.path else self.where
        if self.text:
            return f"{at}: {self.text}"
        return f"{at}: expected {show(self.expected)}, got {show(self.actual)}"


def show(value: Any) -> str:
    if value is ABSENT:
        return "(absent)"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=False, separators=(", ", ": "))
    except (TypeError, ValueError):
        return repr(value)


@dataclass(frozen=True, slots=True)
class Rules:
    """Which fields are ignored: defaults and ``ignore`` patterns, minus ``compare`` patterns."""

    ignore: tuple[str, ...] = ()
    compare: tuple[str, ...] = ()
    defaults: tuple[str, ...] = ()

    @classmethod
    def for_answers(cls, ignore: Iterable[str] = (), compare: Iterable[str] = ()) -> Rules:
        return cls(tuple(ignore), tuple(compare), DEFAULT_IGNORED_AVPS)

    @classmethod
    def for_cdrs(cls, ignore: Iterable[str] = (), compare: Iterable[str] = ()) -> Rules:
        return cls(tuple(ignore), tuple(compare), DEFAULT_IGNORED_CDR_FIELDS)

    def ignored(self, path: Sequence[str]) -> bool:
        if _matches_any(self.compare, path):
            return False
        return _matches_any(self.ignore, path) or _matches_any(self.defaults, path)


def _matches_any(patterns: Iterable[str], path: Sequence[str]) -> bool:
    return any(_matches(p, path) for p in patterns)


def _matches(pattern: str, path: Sequence[str]) -> bool:
    if "/" not in pattern:
        return bool(path) and fnmatchcase(path[-1], pattern)
    steps = pattern.strip("/").split("/")
    return len(steps) == len(path) and all(fnmatchcase(p, s) for s, p in zip(steps, path, strict=True))


@dataclass(slots=True)
class Comparison:
    """Compares two trees under rules; ``subset`` compares only what the expected tree names."""

    rules: Rules
    where: str
    subset: bool = False
    enums: bool = True  # leaves may be AVPs: an enumerated name equals its number
    differences: list[Difference] = field(default_factory=list)

    def run(self, expected: Any, actual: Any) -> list[Difference]:
        self._walk(expected, actual, [], [])
        return self.differences

    def _walk(self, expected: Any, actual: Any, names: list[str], shown: list[str]) -> None:
        if isinstance(expected, dict) and isinstance(actual, dict):
            for key, value in expected.items():
                if self.rules.ignored([*names, key]):
                    continue
                if key not in actual:
                    self._diff([*shown, key], value, ABSENT)
                else:
                    self._walk(value, actual[key], [*names, key], [*shown, key])
            if not self.subset:
                for key, value in actual.items():
                    if key not in expected and not self.rules.ignored([*names, key]):
                        self._diff([*shown, key], ABSENT, value)
            return
        if isinstance(expected, list) or isinstance(actual, list):
            self._walk_list(expected, actual, names, shown)
            return
        if not self._same_leaf(expected, actual, names):
            self._diff(shown, expected, actual)

    def _walk_list(self, expected: Any, actual: Any, names: list[str], shown: list[str]) -> None:
        exp = expected if isinstance(expected, list) else [expected]
        act = actual if isinstance(actual, list) else [actual]
        if len(exp) != len(act):
            self._diff(shown, f"{len(exp)} instances", f"{len(act)} instances")
        last = shown[-1] if shown else ""
        for i, (e, a) in enumerate(zip(exp, act, strict=False), 1):
            here = [*shown[:-1], f"{last}[{i}]"] if shown else [f"[{i}]"]
            self._walk(e, a, names, here)

    def _same_leaf(self, expected: Any, actual: Any, names: list[str]) -> bool:
        if expected == actual and type(expected) is type(actual):
            return True
        if _number(expected) and _number(actual):
            return bool(expected == actual)
        if self.enums and names and isinstance(expected, int | str) and isinstance(actual, int | str):
            defn = DICTIONARY.by_name.get(names[-1])
            if defn is not None and defn.is_enumerated:
                return _enum_number(defn.enum_by_name, expected) == _enum_number(defn.enum_by_name, actual)
        return False

    def _diff(self, shown: list[str], expected: Any, actual: Any) -> None:
        self.differences.append(Difference(self.where, "/".join(shown), expected, actual))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _enum_number(names: dict[str, int], value: int | str) -> int | str:
    return names.get(value, value) if isinstance(value, str) else value


def compare_trees(
    expected: Any, actual: Any, rules: Rules, where: str, subset: bool = False, enums: bool = True
) -> list[Difference]:
    return Comparison(rules, where, subset, enums).run(expected, actual)
