"""The root every package's branch starts from (cdf, ocf, billing each keep a branch of their own).

Revision ID: core_0001
Revises:
"""

from __future__ import annotations

revision = "core_0001"
down_revision = None
branch_labels = ("core",)
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
