"""The simulator's model list: OpenRouter's saved catalogue, the tests' models, `GET /models`, prices and costs.

`GET /models` lists OpenRouter's own model list as saved on 2026-08-18 (`CATALOG_FILE` beside this module: ids,
names, context lengths, architecture, prices, top provider, supported parameters), then a few models orbatch's
examples name that OpenRouter has withdrawn since (kept from the last saved list that had them, so the examples
run offline), then the `sim/*` models the tests use. Any listed id is accepted and billed at its listed prices:
prompt and completion USD per token, plus the request price where one is listed.

Embedding models are a list of their own, served by `GET /embeddings/models` and not by `GET /models`, as on
OpenRouter (its `/models` lists none of them). A `:batch` entry is the model's batch variant, at its own price
(about half): the Batch API prices a line with it (`batch_variant`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib.resources import files
from typing import Any

import orjson

__all__ = [
    "API_PREFIX",
    "BATCH_SUFFIX",
    "CATALOG_FILE",
    "EMBEDDING_MODELS",
    "LISTED_CONTEXT",
    "SIM_CONTEXTS",
    "SIM_MODELS",
    "SMALL_CONTEXT",
    "Catalogue",
    "Cost",
    "EmbeddingModel",
    "default_models",
    "embedding_entry",
    "listing_entry",
    "openrouter_snapshot",
    "served_models",
    "snapshot_date",
]

# Where the simulated API lives on the server; the listing's links name it too.
API_PREFIX = "/api/v1"

# OpenRouter's GET /models as saved on the date in its name; the file says where it came from.
CATALOG_FILE = "openrouter_models_2026-08-18.json"

# The tests' own models, never in OpenRouter's list: id -> (prompt, completion) USD per token.
SIM_MODELS: dict[str, tuple[str, str]] = {
    "sim/echo": ("0.000001", "0.000002"),
    "sim/echo:free": ("0", "0"),
    "sim/backup": ("0.000002", "0.000004"),
    "sim/backup:free": ("0", "0"),
    "sim/spare": ("0.000003", "0.000006"),
    "sim/last-resort": ("0.000004", "0.000008"),
    # Batch variants at half price, as OpenRouter's `:batch` entries are, so paid batches run cheaply.
    "sim/echo:batch": ("0.0000005", "0.000001"),
    "sim/backup:batch": ("0.000001", "0.000002"),
    # A model whose context is small (SMALL_CONTEXT): a long prompt is answered 400, as OpenRouter answers it.
    "sim/small": ("0.000001", "0.000002"),
}
# The context windows of the tests' models that are not the usual LISTED_CONTEXT: small enough that a prompt
# of a few thousand characters overflows it.
SMALL_CONTEXT = 512
SIM_CONTEXTS: dict[str, int] = {"sim/small": SMALL_CONTEXT}
# What a model listed only by its prices takes, as most of OpenRouter's current chat models do.
LISTED_CONTEXT = 131072

# The slug suffix of a model's batch variant.
BATCH_SUFFIX = ":batch"


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """An embeddings model: its price per input token (USD), vector length, context and what it takes in."""

    id: str
    name: str
    prompt: str
    dimensions: int
    context_length: int = 8192
    input_modalities: tuple[str, ...] = ("text",)
    tokenizer: str = "Other"


# The embeddings models the docs name (embeddings.md §7), with their documented prices and vector lengths;
# the Qwen and NVIDIA prices and lengths are not in the docs (the models' own cards give the lengths, the prices
# are assumptions). Then the tests' own: small vectors, a price above zero, a batch variant at half price.
EMBEDDING_MODELS: tuple[EmbeddingModel, ...] = (
    EmbeddingModel(
        "openai/text-embedding-3-small", "OpenAI: Text Embedding 3 Small", "0.00000002", 1536, tokenizer="GPT"
    ),
    EmbeddingModel(
        "openai/text-embedding-3-large", "OpenAI: Text Embedding 3 Large", "0.00000013", 3072, tokenizer="GPT"
    ),
    EmbeddingModel(
        "qwen/qwen3-embedding-0.6b",
        "Qwen: Qwen3 Embedding 0.6B",
        "0.00000001",
        1024,
        32768,
        tokenizer="Qwen3",
    ),
    EmbeddingModel(
        "nvidia/llama-nemotron-embed-vl-1b-v2",
        "NVIDIA: Llama Nemotron Embed VL 1B V2",
        "0.00000002",
        2048,
        input_modalities=("text", "image"),
    ),
    EmbeddingModel("sim/embed", "sim/embed", "0.000001", 8),
    EmbeddingModel("sim/embed:batch", "sim/embed (batch)", "0.0000005", 8),
)


@functools.cache
def _snapshot() -> dict[str, Any]:
    snapshot: dict[str, Any] = orjson.loads(files("jobs.simulator").joinpath(CATALOG_FILE).read_bytes())
    return snapshot


def snapshot_date() -> str:
    """The day OpenRouter's list shipped here was saved."""
    return str(_snapshot()["snapshot"])


def listing_entry(
    model_id: str,
    prompt: str,
    completion: str,
    request: str | None = None,
    context_length: int = LISTED_CONTEXT,
) -> dict[str, Any]:
    """A `/models` entry for a model given only by its prices (the tests' models), and its context window."""
    pricing = {"prompt": prompt, "completion": completion}
    if request is not None:
        pricing["request"] = request
    return {
        "id": model_id,
        "canonical_slug": model_id,
        "name": model_id,
        "created": 1735689600,
        "context_length": context_length,
        "architecture": {
            "modality": "text->text",
            "input_modalities": ["text"],
            "output_modalities": ["text"],
            "tokenizer": "Other",
            "instruct_type": None,
        },
        "pricing": pricing,
        "top_provider": {
            "context_length": context_length,
            "max_completion_tokens": min(8192, context_length),
            "is_moderated": False,
        },
        "supported_parameters": ["max_tokens", "temperature", "top_p", "stop", "seed", "response_format"],
    }


def embedding_entry(model: EmbeddingModel) -> dict[str, Any]:
    """A `GET /embeddings/models` entry, shaped as the spec's example of one."""
    inputs = list(model.input_modalities)
    return {
        "id": model.id,
        "canonical_slug": model.id,
        "name": model.name,
        "created": 1735689600,
        "description": f"{model.name}: {model.dimensions}-dimensional embeddings.",
        "context_length": model.context_length,
        "architecture": {
            "modality": f"{'+'.join(inputs)}->embeddings",
            "input_modalities": inputs,
            "output_modalities": ["embeddings"],
            "tokenizer": model.tokenizer,
            "instruct_type": None,
        },
        "pricing": {"prompt": model.prompt, "completion": "0", "request": "0", "image": "0"},
        "top_provider": {
            "context_length": model.context_length,
            "max_completion_tokens": None,
            "is_moderated": False,
        },
        "per_request_limits": None,
        "supported_parameters": [],
        "default_parameters": None,
        "supported_voices": None,
        "expiration_date": None,
        "knowledge_cutoff": None,
        "links": {"details": f"{API_PREFIX}/models/{model.id}/endpoints"},
    }


def default_models() -> list[dict[str, Any]]:
    """The catalogue served by default: OpenRouter's list, the withdrawn models the examples name, `sim/*`."""
    snapshot = _snapshot()
    return [
        *snapshot["data"],
        *(entry["model"] for entry in snapshot["withdrawn"]),
        *(
            listing_entry(model_id, *prices, context_length=SIM_CONTEXTS.get(model_id, LISTED_CONTEXT))
            for model_id, prices in SIM_MODELS.items()
        ),
    ]


def openrouter_snapshot() -> tuple[str, list[dict[str, Any]]]:
    """The day OpenRouter's list was saved and that list as shipped (no withdrawn model, no `sim/*`)."""
    snapshot = _snapshot()
    return str(snapshot["snapshot"]), list(snapshot["data"])


def served_models() -> list[dict[str, Any]]:
    """`GET /models`'s `data` as a simulator answers it before any reconfiguration, with no simulator running."""
    return [_served(entry) for entry in Catalogue(default_models()).models.values()]


def _usd(value: Any) -> Decimal:
    # "-1" marks a price OpenRouter cannot know in advance (its routers); the simulator charges nothing for it.
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)
    return amount if amount.is_finite() and amount > 0 else Decimal(0)


def _served(entry: Mapping[str, Any]) -> dict[str, Any]:
    # Fields the published schema requires that the saved list was trimmed of; they hold nothing for text models.
    slug = entry.get("canonical_slug") or entry["id"]
    return {
        "per_request_limits": None,
        "default_parameters": None,
        "supported_voices": None,
        **entry,
        "links": {"details": f"{API_PREFIX}/models/{slug}/endpoints"},
    }


def _configured_entry(model: Mapping[str, Any]) -> Mapping[str, Any]:
    """An entry of `POST /_sim/config {"models": [...]}`: a full `/models` entry, or an id with its prices (and
    its `context_length`, LISTED_CONTEXT when not given)."""
    if "pricing" in model:
        return model
    context = int(model.get("context_length", LISTED_CONTEXT))
    if context < 1:
        raise ValueError("a model's context_length must be at least 1")
    return listing_entry(
        model["id"],
        str(model["prompt"]),
        str(model["completion"]),
        None if model.get("request") is None else str(model["request"]),
        context,
    )


@dataclass(frozen=True, slots=True)
class Cost:
    """What a call costs in USD: its prompt tokens, its completion tokens, and in all (the request price too)."""

    prompt: Decimal
    completion: Decimal
    total: Decimal


def _embedding_model(model: Mapping[str, Any]) -> EmbeddingModel:
    """An entry of `POST /_sim/config {"embedding_models": [...]}`: `{"id", "prompt", "dimensions", ...}`."""
    dimensions = int(model["dimensions"])
    if dimensions < 1:
        raise ValueError("an embedding model's dimensions must be at least 1")
    return EmbeddingModel(
        id=str(model["id"]),
        name=str(model.get("name", model["id"])),
        prompt=str(model["prompt"]),
        dimensions=dimensions,
        context_length=int(model.get("context_length", 8192)),
        input_modalities=tuple(model.get("input_modalities", ("text",))),
    )


class Catalogue:
    """The models a simulator accepts, their prices, its `GET /models` body, and its embeddings models."""

    def __init__(
        self, entries: Iterable[Mapping[str, Any]], embeddings: Iterable[EmbeddingModel] | None = None
    ) -> None:
        self.models = {str(e["id"]): dict(e) for e in entries}
        self.embeddings = {m.id: m for m in (EMBEDDING_MODELS if embeddings is None else embeddings)}
        self.prices = {
            model_id: tuple(_usd(e.get("pricing", {}).get(k)) for k in ("prompt", "completion", "request"))
            for model_id, e in self.models.items()
        }
        self.prices.update({m.id: (_usd(m.prompt), Decimal(0), Decimal(0)) for m in self.embeddings.values()})
        served = [_served(e) for e in self.models.values()]
        # Serialised once: the list is asked for at every submit and changes only through configure.
        self.body = orjson.dumps({"data": served, "total_count": len(served), "links": {"next": None}})

    @classmethod
    def configured(
        cls, models: Iterable[Mapping[str, Any]], embeddings: Iterable[EmbeddingModel] | None = None
    ) -> Catalogue:
        """The catalogue `POST /_sim/config {"models": [...]}` sets (entries with `pricing`, or bare prices)."""
        return cls((_configured_entry(m) for m in models), embeddings)

    def with_embeddings(self, models: Iterable[Mapping[str, Any]]) -> Catalogue:
        """This catalogue with `POST /_sim/config {"embedding_models": [...]}` as its embeddings models."""
        return Catalogue(self.models.values(), [_embedding_model(m) for m in models])

    def batch_variant(self, model: str) -> str | None:
        """The `:batch` entry a batch of `model` (a `:batch` slug or its base) is priced with; None if none."""
        variant = model if model.endswith(BATCH_SUFFIX) else model + BATCH_SUFFIX
        return variant if variant in self.models or variant in self.embeddings else None

    def embeddings_page(self, offset: int, limit: int | None) -> dict[str, Any]:
        """`GET /embeddings/models`'s body: the entries from `offset`, `limit` of them (all when None)."""
        entries = [embedding_entry(m) for m in self.embeddings.values()]
        end = len(entries) if limit is None else offset + limit
        following = None
        if limit is not None and end < len(entries):
            following = f"{API_PREFIX}/embeddings/models?offset={end}&limit={limit}"
        return {"data": entries[offset:end], "total_count": len(entries), "links": {"next": following}}

    def context_of(self, model: str) -> int | None:
        """The tokens (prompt and completion) a chat model takes, as its entry lists them; None when it does not."""
        context = self.models.get(model, {}).get("context_length")
        return context if isinstance(context, int) and context > 0 else None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> Cost:
        """A call's cost at this model's listed prices."""
        prompt_price, completion_price, request_price = self.prices[model]
        prompt_cost = prompt_price * prompt_tokens
        completion_cost = completion_price * completion_tokens
        return Cost(prompt_cost, completion_cost, prompt_cost + completion_cost + request_price)
