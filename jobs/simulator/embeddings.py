"""Simulated embeddings: a request's checks, deterministic vectors, usage and cost, the response's shape.

Used by `POST /embeddings` and by the Batch API's `/v1/embeddings` lines alike. What the docs leave open:
- **Vectors** are a seeded hash of (base model, input, dimensions), L2-normalised: the same input gives the
  same vector every time, and a model's `:batch` variant gives the same vectors as the model itself.
- **Tokens** are a stub: a string counts one token per four characters (at least one, as the chat answers
  count), a token array its length, an image part 258 tokens (the spec's example).
- **`encoding_format: "base64"`** packs each vector as float32 little-endian, as OpenAI does; OpenRouter's
  packing is not documented (an assumption).
- **`dimensions`** is honoured for any value from 1 to 16,384, whatever the model's own length.
- **Multimodal input** (`[{"content": [part, ...]}]`) is taken by a model whose input modalities cover every
  part's (`nvidia/llama-nemotron-embed-vl-1b-v2` takes images); any other answers 400.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from jobs.simulator.catalogue import BATCH_SUFFIX, Catalogue, Cost, EmbeddingModel

__all__ = [
    "EmbeddingRequest",
    "Problem",
    "batch_line_problem",
    "input_text",
    "read_request",
    "response",
    "tokens",
    "usage",
    "vector",
]

MAX_DIMENSIONS = 16_384
IMAGE_TOKENS = 258
# Which modality each multimodal part type is, as `architecture.input_modalities` names them.
_PART_MODALITIES = {
    "text": "text",
    "image_url": "image",
    "input_audio": "audio",
    "input_video": "video",
    "file": "file",
}
_WRONG_TYPE = (
    "input must be a string, an array of strings, an array of token ids, an array of token-id arrays, "
    'or an array of {"content": [...]} items'
)


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a request is refused: the HTTP status and the message."""

    status: int
    message: str


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """A checked embeddings request: the model as named and as listed, one item per vector, the output form."""

    model_id: str
    model: EmbeddingModel
    items: list[Any]
    dimensions: int
    base64: bool


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _multimodal_problem(items: list[Any]) -> str | None:
    for item in items:
        content = item.get("content")
        if not isinstance(content, list) or not content:
            return 'each multimodal item needs a non-empty "content" array'
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in _PART_MODALITIES:
                return f"a content part's type must be one of {sorted(_PART_MODALITIES)}"
            if part["type"] == "text" and (not isinstance(part.get("text"), str) or not part["text"]):
                return "a text part needs a non-empty text"
            if part["type"] == "image_url" and not isinstance((part.get("image_url") or {}).get("url"), str):
                return "an image_url part needs an image_url.url"
    return None


def _items(value: Any) -> tuple[list[Any], str] | str:
    """The inputs one vector each is made for, and their form; or what is wrong with `input`."""
    if isinstance(value, str):
        return ([value], "text") if value else "input must not be an empty string"
    if not isinstance(value, list):
        return _WRONG_TYPE
    if not value:
        return "input must not be an empty array"
    if all(isinstance(v, str) for v in value):
        if not all(value):
            return "input must not contain an empty string"
        return value, "text"
    if all(_is_token(v) for v in value):
        return [value], "tokens"  # one token array is one input
    if all(isinstance(v, list) for v in value):
        if all(v and all(_is_token(t) for t in v) for v in value):
            return value, "tokens"
        return "each token array must be a non-empty array of token ids (integers)"
    if all(isinstance(v, dict) for v in value):
        problem = _multimodal_problem(value)
        return problem if problem is not None else (value, "multimodal")
    return _WRONG_TYPE


def read_request(body: Any, catalogue: Catalogue) -> EmbeddingRequest | Problem:
    """The request checked as `POST /embeddings` checks it: 400 for its shape, 404 for its model."""
    if not isinstance(body, dict):
        return Problem(400, "Invalid request parameters: the body must be a JSON object")
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        return Problem(400, 'Invalid request parameters: "model" is required and must be a string')
    if "input" not in body or body["input"] is None:
        return Problem(400, 'Invalid request parameters: "input" is required')
    found = _items(body["input"])
    if isinstance(found, str):
        return Problem(400, f"Invalid request parameters: {found}")
    items, form = found
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        return Problem(
            400, f"Invalid request parameters: dimensions must be an integer from 1 to {MAX_DIMENSIONS}"
        )
    encoding = body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        return Problem(400, 'Invalid request parameters: encoding_format must be "float" or "base64"')
    for key in ("input_type", "user"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return Problem(400, f"Invalid request parameters: {key} must be a string")
    if body.get("provider") is not None and not isinstance(body["provider"], dict):
        return Problem(400, "Invalid request parameters: provider must be an object")
    model = catalogue.embeddings.get(model_id)
    if model is None:
        return Problem(404, f"Resource not found: {model_id} is not an embeddings model")
    if form == "multimodal":
        used = {_PART_MODALITIES[p["type"]] for item in items for p in item["content"]}
        if not used <= set(model.input_modalities):
            return Problem(
                400,
                f"Invalid request parameters: {model_id} takes {'/'.join(model.input_modalities)} input, "
                f"not {'/'.join(sorted(used - set(model.input_modalities)))}",
            )
    return EmbeddingRequest(
        model_id, model, items, model.dimensions if dimensions is None else dimensions, encoding == "base64"
    )


def batch_line_problem(body: dict[str, Any]) -> str | None:
    """What a Batch API embeddings line may not carry (embeddings.md §8), or None."""
    for key in ("input_type", "provider"):
        if key in body:
            return f"{key} is not supported in batch embeddings lines"
    value = body.get("input")
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return "multimodal input is not supported in batch embeddings lines"
    return None


def input_text(body: dict[str, Any]) -> str:
    """The text of a request's inputs, which scripted rules match."""
    value = body.get("input")
    values = value if isinstance(value, list) else [value]
    texts = [v for v in values if isinstance(v, str)]
    for item in values:
        if isinstance(item, dict) and isinstance(item.get("content"), list):
            texts.extend(
                p["text"] for p in item["content"] if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
    return " ".join(texts)


def vector(model_id: str, item: Any, dimensions: int) -> list[float]:
    """The embedding of one input: a seeded hash of (base model, input, dimensions), of unit length."""
    base = model_id.removesuffix(BATCH_SUFFIX)
    seed = orjson.dumps([base, dimensions, item], option=orjson.OPT_SORT_KEYS)
    raw = hashlib.shake_256(seed).digest(4 * dimensions)
    values = [n / 2**31 - 1.0 for n in struct.unpack(f"<{dimensions}I", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _item_tokens(item: Any) -> tuple[int, int]:
    if isinstance(item, str):
        return max(1, len(item) // 4), 0
    if isinstance(item, dict):
        parts = item["content"]
        text = sum(len(p["text"]) for p in parts if p["type"] == "text")
        images = sum(1 for p in parts if p["type"] != "text")
        return (max(1, text // 4) if text else 0), images * IMAGE_TOKENS
    return len(item), 0


def tokens(request: EmbeddingRequest) -> tuple[int, int]:
    """The request's text tokens and other (image...) tokens, by the stub the module's docstring gives."""
    counts = [_item_tokens(item) for item in request.items]
    return sum(t for t, _ in counts), sum(o for _, o in counts)


def usage(
    text_tokens: int, other_tokens: int, cost: Cost | None, *, byok: bool, omit_cost: bool
) -> dict[str, Any]:
    """A response's `usage`: prompt tokens = total tokens, and the cost at the model's price (None: no cost)."""
    total_tokens = text_tokens + other_tokens
    result: dict[str, Any] = {"prompt_tokens": total_tokens, "total_tokens": total_tokens}
    if text_tokens and other_tokens:
        # Only when the input mixes modalities, and only the non-zero counts, as the spec says.
        result["prompt_tokens_details"] = {"text_tokens": text_tokens, "image_tokens": other_tokens}
    if cost is None:
        return result
    result.update(
        cost=float(cost.total),
        is_byok=False,
        cost_details={
            "upstream_inference_cost": None,
            "upstream_inference_prompt_cost": float(cost.prompt),
            "upstream_inference_completions_cost": 0.0,
        },
    )
    if byok:
        # As for chat: OpenRouter's BYOK fee is 5 % of what the provider charges the user's own key.
        result["is_byok"] = True
        result["cost"] = float(cost.total * Decimal("0.05"))
        result["cost_details"]["upstream_inference_cost"] = float(cost.total)
    if omit_cost:
        del result["cost"]
    return result


def response(request: EmbeddingRequest, generation: str, usage: dict[str, Any]) -> dict[str, Any]:
    """The 200 body: `object: "list"`, one `data` item per input in input order (`index` = position)."""
    data = []
    for index, item in enumerate(request.items):
        values = vector(request.model_id, item, request.dimensions)
        embedding: list[float] | str = values
        if request.base64:
            embedding = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "id": generation,
        "object": "list",
        "model": request.model_id,
        "data": data,
        "usage": usage,
    }
