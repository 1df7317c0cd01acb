# The orbatch image: the `orbatch` command, used by docker-compose.yml for `migrate` and `worker`.
FROM python:3.11-slim

RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock README.md alembic.ini ./
COPY jobs ./jobs
COPY worker ./worker
COPY migrations ./migrations
RUN uv sync --frozen --no-dev

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1
# A non-root user: the worker needs no privileges.
RUN useradd --system --uid 10001 orbatch
USER orbatch

ENTRYPOINT ["orbatch"]
CMD ["worker"]
