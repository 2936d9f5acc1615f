"""Whether one word of a caption controls one attribute alone: change the word, keep the seed, judge both images.

A generator whose condition is decoupled redraws only what the changed word names: "a red circle at the top"
-> "a blue circle at the top", same seed, should change the colour and keep the shape, size, position and
background the judge reads. Sampling from the same seed draws the same random numbers for each row of a batch
(the sampler consumes them whatever the probabilities), so what changes is the condition's doing.

The judge errs, and an attribute the caption leaves out varies with the seed, so a change alone proves nothing:
beside each share of changes stands its control, the share with which the same attribute reads differently
between two images of one unchanged caption and two seeds. A word that leaks into an attribute changes it more
often than that; one that does not, no more often.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from llamagen.analysis.statistics import Estimate, proportion
from llamagen.data.shapes import COLOURS, HELD_OUT_PAIRS, SHAPES, recaption
from llamagen.evaluation.judges import load_judge

# The words changed, each the name of the judge's head that reads it, with the values it takes.
SWAPPED_WORDS = {"shape": SHAPES, "colour": tuple(COLOURS)}
# The control's second seed: far from any seed a batch of the first one uses.
CONTROL_SEED_OFFSET = 1_000_003


@dataclasses.dataclass(frozen=True)
class WordSwap:
    """One changed word's effect over n captions."""

    word: str  # the attribute whose word was changed
    took_effect: Estimate  # the judge reads the new word's value
    changed: dict[str, Estimate]  # per other attribute: it reads differently after the change, same seed
    control: dict[str, Estimate]  # per other attribute: it reads differently between two seeds, same caption

    def as_rows(self) -> list[dict]:
        rows = [{"word": self.word, "attribute": self.word, "measure": "took_effect", **_fields(self.took_effect)}]
        for name in self.changed:
            rows.append({"word": self.word, "attribute": name, "measure": "changed", **_fields(self.changed[name])})
            rows.append({"word": self.word, "attribute": name, "measure": "control", **_fields(self.control[name])})
        return rows


def _fields(estimate: Estimate) -> dict:
    return {"share": float(estimate.mean), "low": float(estimate.low), "high": float(estimate.high), "n": estimate.n}


def swapped_value(item: dict, word: str, rng: np.random.Generator) -> str:
    """Another value for `word` of the shapes `item`, drawn uniformly among those that do not make a shape-colour
    pair text-to-image training held out (which would measure composition, not decoupling)."""
    attributes = item["attributes"]
    choices = []
    for value in SWAPPED_WORDS[word]:
        pair = {**attributes, word: value}
        if value != attributes[word] and (pair["shape"], pair["colour"]) not in HELD_OUT_PAIRS:
            choices.append(value)
    return choices[int(rng.integers(len(choices)))]


@torch.no_grad()
def word_swaps(pipe, items: list[dict], seed: int = 0, batch: int = 200, **sampling) -> list[WordSwap]:
    """For each word of SWAPPED_WORDS, change it in every caption of shapes `items` (`swapped_value`), generate
    the original and the changed caption from the same seed, and a control of the original from a second seed;
    the judge reads every attribute of each image."""
    if pipe.model_type != "t2i":
        raise ValueError("changing a caption's words needs a text-conditional pipeline")
    if not items:
        raise ValueError("word_swaps needs at least one caption")
    judge = load_judge("shapes-judge", device=pipe.device)

    def read(prompts: list[str], first_seed: int) -> dict[str, torch.Tensor]:
        reads: dict[str, list[torch.Tensor]] = {name: [] for name in judge.config.heads}
        for start in range(0, len(prompts), batch):
            pixels = pipe(prompts=prompts[start : start + batch], seed=first_seed + start, **sampling).pixels
            for name, values in judge.predict(pixels.to(pipe.device)).items():
                reads[name].append(values.cpu())
        return {name: torch.cat(values) for name, values in reads.items()}

    captions = [item["caption"] for item in items]
    original = read(captions, seed)
    control = read(captions, seed + CONTROL_SEED_OFFSET)
    rng = np.random.default_rng(seed)
    swaps = []
    for word in SWAPPED_WORDS:
        values = [swapped_value(item, word, rng) for item in items]
        changed = read([recaption(item, **{word: value}) for item, value in zip(items, values, strict=True)], seed)
        wanted = torch.tensor([SWAPPED_WORDS[word].index(value) for value in values])  # the judge's labels
        others = [name for name in judge.config.heads if name != word]
        swaps.append(
            WordSwap(
                word=word,
                took_effect=_share(changed[word] == wanted),
                changed={name: _share(changed[name] != original[name]) for name in others},
                control={name: _share(control[name] != original[name]) for name in others},
            )
        )
    return swaps


def _share(hits: torch.Tensor) -> Estimate:
    return proportion(int(hits.sum()), len(hits))
