"""templates: the record behind each request and the template a batch was built with

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batch", sa.Column("template", postgresql.JSONB(), nullable=True))
    op.add_column("request", sa.Column("record", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("request", "record")
    op.drop_column("batch", "template")
