"""The IMS-GWF: a SIP application server in proxy mode that charges sessions over Ro (and optionally Rf).

``charging.gwf.sip`` is the sans-I/O SIP core (messages, transactions, dialogs, proxy rules) plus a thin
asyncio transport; ``charging.gwf.credit`` is the sans-I/O RFC 4006 credit-control client session;
``charging.gwf.server`` ties both to the Diameter node.  See docs/gwf.md.
"""
