"""orbatch from Python: a table in, the same kind of table out, with every answer, error and cost stored.

    import orbatch
    labelled = orbatch.run(df, template="Label this review: {text}", schema=Label,
                           models=["google/gemma-4-31b-it:free"])

The same call again finds the same batch and carries on; `submit` returns a `Batch` for work that outlives the
call. The rest of orbatch (`jobs`, `worker`) is private.
"""

from __future__ import annotations

from jobs.core.errors import BadInput, NeedsPerson, OrbatchError, ServiceUnavailable
from jobs.library.front import Batch, arun, asubmit, batch, run, submit
from jobs.library.session import close
from jobs.observation.standing import BatchSummary

__all__ = [
    "BadInput",
    "Batch",
    "BatchSummary",
    "NeedsPerson",
    "OrbatchError",
    "ServiceUnavailable",
    "arun",
    "asubmit",
    "batch",
    "close",
    "run",
    "submit",
]
