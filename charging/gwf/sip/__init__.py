"""A SIP stack for a record-routing proxy, sans-I/O (RFC 3261): messages, transactions, dialogs, proxy rules;
``transport`` is the asyncio edge that moves bytes and nothing else."""
