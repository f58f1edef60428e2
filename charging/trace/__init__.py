"""Charging traces: record Diameter traffic, import it from captures, replay it and check the results.

The format is documented in docs/traces.md.  Pure parts (no I/O): ``format`` (the
JSON-lines records), ``display`` (messages as readable trees), ``tcp`` and ``sctp``
(stream reassembly), ``frames`` (Diameter framing of reassembled streams), ``plan``,
``compare`` and ``rewrite``.  At the edges: ``capture`` (pcap/pcapng through dpkt),
``importer``, ``recorder`` and ``proxy`` (recording), ``replay`` and ``targets``
(replaying against a CDF/OCF), ``report`` (text and JUnit XML), ``cli``.
"""
