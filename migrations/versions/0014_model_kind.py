"""which of an upstream's models are embedding models

OpenRouter lists its embedding models apart (`GET /embeddings/models`) from its chat models (`GET /models`). A
batch's lines are for one endpoint, and a model of the other kind fails every call (a 404, or "not a valid
model ID"), so submit refuses it, naming the line; the cached list must keep each model's kind for that.
`model_price.embeddings` is true for a model of the embeddings list. Lists cached before it have no embedding
models (they were not fetched), so false is right for every row there is.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "model_price", sa.Column("embeddings", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    op.drop_column("model_price", "embeddings")
