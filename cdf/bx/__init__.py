"""CDR files for the billing domain over Bx (TS 32.297 files of TS 32.298 ASN.1 BER records).

- ``fileformat``: the TS 32.297 file header and CDR header, encoded and parsed (pure).
- ``asn1``: the only module that touches pycrate (the compiled TS 32.298 ASN.1 modules).
- ``records``: a CDF ``Cdr`` as the IMSRecord CHOICE value of its node type, and back to readable values.
- ``writer``: the file sink: takes CDRs from the CDF outbox, writes files, closes them by size, time,
  count or shutdown, renames them into the output folder and marks what it wrote.
- ``reader``: reads a written file back (``charging cdr decode FILE``).

docs/cdr-files.md describes the files and the guarantees.
"""
