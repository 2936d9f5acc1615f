"""The sampling settings a generator is used with unless told otherwise.

A model trained here is sampled with what its card recommends (`"sampling"`: the guidance scale its judge
scored best, with the top-k, top-p and temperature that sweep held fixed); a published checkpoint, or a file
without a card, with the defaults of the original's sampling scripts (`sample_c2i.py`: guidance 4, top-k
2000; `sample_t2i.py`: guidance 7.5, top-k 1000; temperature 1 and top-p 1 in both).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

_FIELDS = ("cfg_scale", "cfg_interval", "cfg_schedule", "top_k", "top_p", "temperature")


@dataclass(frozen=True)
class SamplingSettings:
    cfg_scale: float
    top_k: int
    top_p: float = 1.0
    temperature: float = 1.0
    cfg_interval: int = -1
    cfg_schedule: str = "constant"  # `llamagen.gpt.guidance_schedules`
    source: str = ""  # where the values come from, for messages

    def values(self) -> dict[str, Any]:
        """The pipeline's keyword arguments."""
        return {name: value for name, value in asdict(self).items() if name in _FIELDS}

    def filled(self, **given) -> dict[str, Any]:
        """The options `given`, each one left at None replaced by this setting's value."""
        unknown = set(given) - set(_FIELDS)
        if unknown:
            raise TypeError(f"not sampling settings: {sorted(unknown)}")
        return {name: getattr(self, name) if value is None else value for name, value in given.items()}

    def describe(self) -> str:
        schedule = "" if self.cfg_schedule == "constant" else f" ({self.cfg_schedule} schedule)"
        return (
            f"guidance {self.cfg_scale:g}{schedule}, top-k {self.top_k}, top-p {self.top_p:g}, temperature "
            f"{self.temperature:g} ({self.source})"
        )

    def fitted_to(self, vocab_size: int) -> SamplingSettings:
        """A top-k at or above the vocabulary keeps every code, as 0 does: said as 0 for a small vocabulary."""
        return replace(self, top_k=0) if self.top_k >= vocab_size else self


ORIGINAL = {
    "c2i": SamplingSettings(cfg_scale=4.0, top_k=2000, source="the original's sample_c2i.py defaults"),
    "t2i": SamplingSettings(cfg_scale=7.5, top_k=1000, source="the original's sample_t2i.py defaults"),
}


def card_sampling(card: dict[str, Any], name: str) -> SamplingSettings:
    """The settings a model card recommends (its `"sampling"` entry)."""
    entry = card["sampling"]
    unknown = set(entry) - {*_FIELDS, "measured"}
    if unknown:
        raise ValueError(f"{name}'s card: unknown sampling settings {sorted(unknown)}")
    return SamplingSettings(**{key: entry[key] for key in _FIELDS if key in entry}, source=f"{name}'s card")


def model_card(weights: Path) -> dict[str, Any] | None:
    """The card beside a `.safetensors` file (`NAME.json`), or None where there is none."""
    card_path = weights.with_suffix(".json")
    if weights.suffix != ".safetensors" or not card_path.is_file():
        return None
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the model card {str(card_path)!r}: {error}") from error
    return card if isinstance(card, dict) else None


def recommended_sampling(weights: Path, model_type: str, vocab_size: int,
                         fallback: SamplingSettings | None = None) -> SamplingSettings:  # fmt: skip
    """The card's settings when a card with a `"sampling"` entry sits beside the weights, else `fallback`, else
    the original's defaults for the model type."""
    card = model_card(weights)
    if card is not None and "sampling" in card:
        return card_sampling(card, weights.stem).fitted_to(vocab_size)
    return (fallback or ORIGINAL[model_type]).fitted_to(vocab_size)
