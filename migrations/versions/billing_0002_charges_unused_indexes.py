"""billing: drop the indexes of billing_charges that no query uses (account_id, invoice_id).

Charges are read by the CDR they belong to (``cdr_row_id``, kept indexed): the CDR detail of the
API and rerating.  The two other indexes were kept up to date for every charge ingested (two or
three per CDR) and never read; no row they reference is ever deleted or has its key changed, so
the foreign keys need no index on this side either.

Revision ID: billing_0002
Revises: billing_0001
"""

from __future__ import annotations

from alembic import op

revision = "billing_0002"
down_revision = "billing_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_billing_charges_account_id", table_name="billing_charges")
    op.drop_index("ix_billing_charges_invoice_id", table_name="billing_charges")


def downgrade() -> None:
    op.create_index("ix_billing_charges_invoice_id", "billing_charges", ["invoice_id"])
    op.create_index("ix_billing_charges_account_id", "billing_charges", ["account_id"])
