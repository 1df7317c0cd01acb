"""SQL text with orbatch's state names filled in from the enums, so a state is renamed or added in one place.

Statements write `{R.PENDING}`, `{B.IN_PROGRESS}`, `{O.IN_FLIGHT}`, `{P.QUOTA}`, `{S.RUNNING}` or `{L.BATCH}`
(request status, batch status, attempt outcome, pause reason, remote batch state, lane) where a state goes; `sql()` puts the quoted value there. The values are
literals, not bind parameters, on purpose: the partial indexes (`WHERE status = 'pending'`) only serve a
query whose predicate names the same literal, which a parameter would hide from the planner.
"""

from __future__ import annotations

import enum
import re

from sqlalchemy import TextClause, text

from jobs.core.states import BatchStatus, Lane, Outcome, PauseReason, RemoteState, RequestStatus

__all__ = ["literal", "sql", "states"]

_ENUMS: dict[str, type[enum.StrEnum]] = {
    "R": RequestStatus,
    "B": BatchStatus,
    "O": Outcome,
    "P": PauseReason,
    "S": RemoteState,
    "L": Lane,
}
_NAME = re.compile(r"\{([RBOPSL])\.([A-Z_]+)\}")


def literal(value: enum.StrEnum) -> str:
    """A state as a quoted SQL literal (the values are lower-case words; nothing to escape)."""
    if not re.fullmatch(r"[a-z_]+", value.value):
        raise ValueError(f"state {value!r} is not a plain word")
    return f"'{value.value}'"


def states(template: str) -> str:
    """The template with every `{X.NAME}` replaced by that state's quoted value; KeyError for a typo."""

    def one(match: re.Match[str]) -> str:
        return literal(_ENUMS[match.group(1)][match.group(2)])

    return _NAME.sub(one, template)


def sql(template: str) -> TextClause:
    """`text()` of the template with its state names filled in."""
    return text(states(template))
