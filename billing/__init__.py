"""Billing: CDRs from Kafka into charges, daily usage and invoices; bill cycles, rerating, REST API and page.

See docs/billing.md.
"""
