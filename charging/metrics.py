"""Prometheus metrics in the text exposition format (0.0.4): counters, gauges, histograms with labels.

Small on purpose: the services only need to count, set and observe, and ``/metrics``
only needs to print.  Gauges may be backed by a function read at scrape time
(outbox backlog, open sessions), so nothing has to be kept in step by hand.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

LabelValues = tuple[str, ...]

DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> LabelValues:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}")
        return tuple(str(v) for v in labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


Read = Callable[[], Iterable[tuple[LabelValues, float]] | float]


def _read_samples(read: Read) -> list[tuple[LabelValues, float]]:
    got = read()
    return [((), float(got))] if isinstance(got, int | float) else [(tuple(k), v) for k, v in got]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (), read: Read | None = None) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {}
        self._read = read  # a total some component already keeps (e.g. CDRs a sink delivered)

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        if self._read is not None:
            items = _read_samples(self._read)
        else:
            with self._lock:
                items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        read: Read | None = None,
    ) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {}
        self._read = read

    def set(self, value: float, *labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = value

    def samples(self) -> list[str]:
        if self._read is not None:
            items = _read_samples(self._read)
        else:
            with self._lock:
                items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0] * (len(self.buckets) + 1)
                self._sums[key] = 0.0
            counts[index] += 1
            self._sums[key] += value

    def count(self, *labels: str) -> int:
        return sum(self._counts.get(self._key(labels), []))

    def samples(self) -> list[str]:
        out: list[str] = []
        with self._lock:
            items = sorted((k, list(v), self._sums[k]) for k, v in self._counts.items())
        for key, counts, total in items:
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = 'le="' + _number(bound) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return out


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> _Metric:
        existing = self._metrics.get(metric.name)
        if existing is not None:
            if type(existing) is not type(metric) or existing.label_names != metric.label_names:
                raise ValueError(f"metric {metric.name} registered twice with different shapes")
            return existing
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labels: Sequence[str] = (), read: Read | None = None) -> Counter:
        metric = self._add(Counter(name, help_text, labels, read))
        assert isinstance(metric, Counter)
        return metric

    def gauge(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        read: Read | None = None,
    ) -> Gauge:
        metric = self._add(Gauge(name, help_text, labels, read))
        assert isinstance(metric, Gauge)
        return metric

    def histogram(
        self, name: str, help_text: str, labels: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> Histogram:
        metric = self._add(Histogram(name, help_text, labels, buckets))
        assert isinstance(metric, Histogram)
        return metric

    def exposition(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines += metric.header()
            lines += metric.samples()
        return "\n".join(lines) + "\n"


class Sampled:
    """Gauges of a service's state in the database (open sessions, outbox backlog), sampled every so often.

    A sampling round (the service's, run where its database work runs) calls ``update``; a scrape prints
    the last values and never waits for the database.  ``<prefix>_sampled_at_seconds`` says how fresh they
    are, so a stalled sampler shows up on a dashboard rather than as flat lines.
    """

    def __init__(self, registry: Registry, prefix: str) -> None:
        self._registry = registry
        self._values: dict[str, list[tuple[LabelValues, float]]] = {}
        self._lock = threading.Lock()
        registry.gauge(
            f"{prefix}_sampled_at_seconds",
            "Unix time of the last sample of the state gauges",
            read=lambda: self._get(""),
        )

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self._registry.gauge(name, help_text, labels, read=lambda: self._get(name))

    def _get(self, name: str) -> list[tuple[LabelValues, float]]:
        with self._lock:
            return list(self._values.get(name, []))

    def update(self, at: float, values: Mapping[str, float | list[tuple[LabelValues, float]]]) -> None:
        unlabelled: LabelValues = ()
        new: dict[str, list[tuple[LabelValues, float]]] = {"": [(unlabelled, at)]}
        for name, value in values.items():
            new[name] = [(unlabelled, float(value))] if isinstance(value, int | float) else list(value)
        with self._lock:
            self._values = new
