"""Which lane a request takes: live calls, or a remote batch of OpenRouter's Batch API at its batch price."""

from __future__ import annotations

from collections.abc import Collection

from jobs.core.constants import BATCH_API_WINDOW_SECONDS

__all__ = [
    "AUTO_MIN_WINDOW_SECONDS",
    "BATCH_SUFFIX",
    "auto_has_room",
    "base_model",
    "batch_models",
    "batch_slug",
]

# A batch variant's id is its model's id with this suffix (`openai/gpt-4o:batch`), with a price of its own.
BATCH_SUFFIX = ":batch"
# `auto` sends a batch with a completion window to the Batch API only when the window holds the remote batch's
# own 24 h and then two hours more: what a remote batch fails or leaves unanswered still runs live in time.
AUTO_MIN_WINDOW_SECONDS = BATCH_API_WINDOW_SECONDS + 2 * 3600


def base_model(model: str) -> str:
    """The model a batch variant is of (the id itself when it is none)."""
    return model.removesuffix(BATCH_SUFFIX)


def auto_has_room(window_seconds: int | None) -> bool:
    """Whether a batch with this completion window (None: none, as on the command line) leaves a remote batch
    its 24 h and the live lane time after it."""
    return window_seconds is None or window_seconds >= AUTO_MIN_WINDOW_SECONDS


def batch_models(known: Collection[str]) -> frozenset[str]:
    """The model ids a request may name first to be taken by `auto`: each model with a batch variant in the
    catalogue, and the variants themselves."""
    return frozenset(m for m in known if m.endswith(BATCH_SUFFIX) or (m + BATCH_SUFFIX) in known)


def batch_slug(model: str, variant_listed: bool, send: str) -> str:
    """The `model` a remote batch is created with for requests whose chain starts with `model`: with `send`
    `variant`, its `:batch` variant when the catalogue lists it (else the base id, for OpenRouter to judge);
    with `send` `base`, the base id, as OpenRouter's own examples do (its docs conflict on which is right,
    hence ORBATCH_BATCH_SLUG)."""
    base = base_model(model)
    if send == "variant" and (variant_listed or model.endswith(BATCH_SUFFIX)):
        return base + BATCH_SUFFIX
    return base
