"""each model's context window, each request's need of it, and the models an attempt skipped

A request whose prompt and `max_tokens` a model's context window cannot hold is answered 400 by that model:
submit refuses a line no model of its chain can hold, and a worker sends no call to a model that would refuse
it. `model_price.context_length` keeps OpenRouter's `context_length` of each model (NULL: not listed, taken to
fit); `request.context_needed` the tokens a request asks of a context (its prompt's estimate plus its
completion bound; NULL for requests stored before it, which fit every model); `attempt.models_skipped` the
models of the chain passed over before the call, for that reason.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("model_price", sa.Column("context_length", sa.Integer(), nullable=True))
    op.add_column("request", sa.Column("context_needed", sa.Integer(), nullable=True))
    op.add_column("attempt", sa.Column("models_skipped", postgresql.ARRAY(sa.Text()), nullable=True))
    op.create_index(
        "attempt_skipped_idx", "attempt", ["batch_id"], postgresql_where=sa.text("models_skipped IS NOT NULL")
    )


def downgrade() -> None:
    op.drop_index("attempt_skipped_idx", table_name="attempt")
    op.drop_column("attempt", "models_skipped")
    op.drop_column("request", "context_needed")
    op.drop_column("model_price", "context_length")
