"""orbatch from Python: a table in, the same kind of table out, with every answer, error and cost stored.

    import orbatch
    labelled = orbatch.run(df, template="Label this review: {text}", schema=Label,
                           models=["google/gemma-4-31b-it:free"])

The same call again finds the same batch and carries on; `submit` returns a `Batch` for work that outlives the
call; `estimate` says what a `submit` of the same data would cost, storing nothing. The rest of orbatch (`jobs`, `worker`) is private.
"""

from __future__ import annotations

from jobs.core.errors import BadInput, NeedsPerson, OrbatchError, ServiceUnavailable
from jobs.library.front import Batch, aestimate, arun, asubmit, batch, estimate, run, submit
from jobs.library.session import close
from jobs.observation.standing import BatchSummary
from jobs.submission.estimate import Estimate

__all__ = [
    "BadInput",
    "Batch",
    "BatchSummary",
    "Estimate",
    "NeedsPerson",
    "OrbatchError",
    "ServiceUnavailable",
    "aestimate",
    "arun",
    "asubmit",
    "batch",
    "close",
    "estimate",
    "run",
    "submit",
]
