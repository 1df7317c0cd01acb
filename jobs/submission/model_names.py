"""Model names as files give them, to OpenRouter's ids: `gpt-4o-mini` is `openai/gpt-4o-mini` when the catalogue
has that name under exactly one provider; an unknown or ambiguous name is an error listing the candidates."""

from __future__ import annotations

import difflib
import functools
from collections import defaultdict
from dataclasses import dataclass

__all__ = ["ModelNames", "model_names", "renamed_note"]

# Close names offered for an unknown one: enough to spot a typo, few enough to read in one error line.
MAX_SUGGESTIONS = 5
# How alike a name must be to be offered (difflib's ratio): below this the offers are noise.
SUGGESTION_CUTOFF = 0.6


@dataclass(slots=True, frozen=True)
class ModelNames:
    """The catalogue's ids, and each bare name (the id after its provider's `/`) with the ids carrying it."""

    known: frozenset[str]
    bare: dict[str, tuple[str, ...]]

    def resolve(self, name: str) -> str:
        """The catalogue id `name` stands for; ValueError saying why there is none (with the candidates)."""
        if name in self.known:
            return name
        if "/" not in name:
            ids = self.bare.get(name, ())
            if len(ids) == 1:
                return ids[0]
            if ids:
                raise ValueError(
                    f"ambiguous model {name!r}: OpenRouter has it under {len(ids)} providers "
                    f"({', '.join(repr(i) for i in ids)}); name one"
                )
        raise ValueError(
            f"unknown model {name!r}: OpenRouter's model lists (GET /models, GET /embeddings/models) have no "
            f"such id{self._offers(name)}"
        )

    def _offers(self, name: str) -> str:
        tail = name.rpartition("/")[2]
        close = difflib.get_close_matches(tail, list(self.bare), MAX_SUGGESTIONS, SUGGESTION_CUTOFF)
        offers = [i for bare in close for i in self.bare[bare]][:MAX_SUGGESTIONS]
        return f" (did you mean {', '.join(repr(i) for i in offers)}?)" if offers else ""


@functools.lru_cache(maxsize=8)
def model_names(known: frozenset[str]) -> ModelNames:
    """The names of a catalogue, built once per catalogue (a million lines resolve from one index)."""
    bare: defaultdict[str, list[str]] = defaultdict(list)
    for model in sorted(known):
        provider, slash, rest = model.partition("/")
        if slash and provider and rest:
            bare[rest].append(model)
    return ModelNames(known, {name: tuple(ids) for name, ids in bare.items()})


def renamed_note(renamed: dict[str, str]) -> str:
    """The one sentence a batch says of the names it took as OpenRouter's ids."""
    pairs = ", ".join(f"{name!r} as {model!r}" for name, model in sorted(renamed.items()))
    return f"model names run as OpenRouter's ids: {pairs}"
