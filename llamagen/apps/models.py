"""Which models the apps offer, loaded once on first use and shared by every request.

The embedded generators and tokenizers are always there; a JSON file adds published or locally trained ones:

    {"device": "cuda", "dtype": "bf16",
     "generators": {"GPT-B ImageNet": {"gpt": "c2i_B_256.pt", "tokenizer": "vq_ds16_c2i.pt"}},
     "tokenizers": {"VQ-16 ImageNet": "vq_ds16_c2i.pt"},
     "motion_generators": {"my motion GPT": {"gpt": "runs/t2m/gpt/final.safetensors"}}}

A generator entry takes the arguments of `llamagen.pipeline.load_pipeline` (gpt, tokenizer, text_encoder,
gpt_config, tokenizer_config); a tokenizer entry is a source for `load_tokenizer`, or {"source", "config"}; a
motion generator entry the arguments of `llamagen.motion.pipeline.load_motion_pipeline` (gpt, tokenizer,
text_encoder, judge).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamagen.checkpoints import embedded_of_kind
from llamagen.pipeline import Pipeline, load_pipeline
from llamagen.tokenizer import VQModel

_GENERATOR_KEYS = {"gpt", "tokenizer", "text_encoder", "gpt_config", "tokenizer_config"}
_MOTION_GENERATOR_KEYS = {"gpt", "tokenizer", "text_encoder", "judge"}
_FILE_KEYS = {"device", "dtype", "generators", "tokenizers", "motion_generators"}


@dataclass
class ModelRegistry:
    """Named generators (arguments of `load_pipeline`), tokenizers (arguments of `load_tokenizer`) and motion
    generators (arguments of `load_motion_pipeline`)."""

    generators: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokenizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    motion_generators: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        self._loaded: dict[tuple, Any] = {}
        self._lock = threading.Lock()  # guards the two dictionaries below, held only for a moment
        self._building: dict[tuple, threading.Lock] = {}  # one per key: a model loads once, others wait
        self._in_use: dict[tuple, threading.Lock] = {}  # one per generator: its KV cache serves one request

    @classmethod
    def embedded(cls) -> ModelRegistry:
        """The models the project ships: every embedded generator, tokenizer and motion generator."""
        from llamagen.motion.pipeline import MOTION_GENERATOR_KIND

        return cls(
            generators={name: {"gpt": name} for name in embedded_of_kind("gpt")},
            tokenizers={name: {"source": name} for name in embedded_of_kind("vq")},
            motion_generators={name: {"gpt": name} for name in embedded_of_kind(MOTION_GENERATOR_KIND)},
        )

    def add_from_file(self, path: str | Path) -> ModelRegistry:
        """Add the models (and take the device and dtype) a JSON file names; see the module docstring."""
        path = Path(path)
        try:
            spec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read the models file {str(path)!r}: {error}") from error
        if not isinstance(spec, dict) or set(spec) - _FILE_KEYS:
            raise ValueError(f"{str(path)!r}: expected an object with {', '.join(sorted(_FILE_KEYS))}")
        generators, tokenizers = spec.get("generators", {}), spec.get("tokenizers", {})
        motion_generators = spec.get("motion_generators", {})
        if not all(isinstance(entries, dict) for entries in (generators, tokenizers, motion_generators)):
            raise ValueError(f"{str(path)!r}: generators, tokenizers and motion_generators are objects of name: entry")
        for entries, kind, keys, into in ((generators, "generator", _GENERATOR_KEYS, self.generators),
                                          (motion_generators, "motion generator", _MOTION_GENERATOR_KEYS,
                                           self.motion_generators)):  # fmt: skip
            for name, entry in entries.items():
                if not isinstance(entry, dict) or "gpt" not in entry or set(entry) - keys:
                    raise ValueError(f"{str(path)!r}: {kind} {name!r} needs 'gpt' and takes only {sorted(keys)}")
                into[name] = entry
        for name, entry in tokenizers.items():
            entry = {"source": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, dict) or "source" not in entry or set(entry) - {"source", "config"}:
                raise ValueError(f"{str(path)!r}: tokenizer {name!r} is a path, or an object of source and config")
            self.tokenizers[name] = entry
        self.device = spec.get("device", self.device)
        self.dtype = spec.get("dtype", self.dtype)
        return self

    def pipeline(self, name: str) -> Pipeline:
        """The named generator's pipeline, loaded on first use: for what it says about itself (classes, sizes).
        Sampling goes through `generation(name)`."""
        if name not in self.generators:
            raise ValueError(f"unknown generator {name!r}; choose one of {', '.join(self.generators)}")
        load = functools.partial(load_pipeline, **self.generators[name], device=self.device, dtype=self.dtype)
        return self.cached(("generator", name), load, f"generator {name!r}")

    @contextlib.contextmanager
    def generation(self, name: str) -> Iterator[Pipeline]:
        """The named generator's pipeline, held for this request alone: a generator keeps one KV cache, so
        requests for the same generator take turns while requests for different ones run side by side."""
        pipe = self.pipeline(name)
        with self._held(("generator", name)):
            yield pipe

    def motion_pipeline(self, name: str):
        """The named motion generator's pipeline, loaded on first use (on the CPU: its models are small)."""
        if name not in self.motion_generators:
            choices = ", ".join(self.motion_generators) or "none here"
            raise ValueError(f"unknown motion generator {name!r}; choose one of {choices}")
        from llamagen.motion.pipeline import load_motion_pipeline

        load = functools.partial(load_motion_pipeline, **self.motion_generators[name])
        return self.cached(("motion generator", name), load, f"motion generator {name!r}")

    @contextlib.contextmanager
    def motion_generation(self, name: str):
        """The named motion generator's pipeline, held for this request alone, as `generation` holds one."""
        pipe = self.motion_pipeline(name)
        with self._held(("motion generator", name)):
            yield pipe

    @contextlib.contextmanager
    def _held(self, key: tuple) -> Iterator[None]:
        with self._lock:
            in_use = self._in_use.setdefault(key, threading.Lock())
        with in_use:
            yield

    def tokenizer(self, name: str) -> VQModel:
        if name not in self.tokenizers:
            raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(self.tokenizers)}")
        from llamagen.tokenizer.loading import load_tokenizer

        entry = self.tokenizers[name]
        # Unless the models file says otherwise, tokenizers run in bf16 where the device multiplies it in
        # hardware: a photo reconstructs in about half float32's time, equal to it within bf16 rounding.
        load = functools.partial(load_tokenizer, entry["source"], entry.get("config"), self.device,
                                 self.dtype or "auto")  # fmt: skip
        return self.cached(("tokenizer", name), load, f"tokenizer {name!r}")

    def cached(self, key: tuple, make, what: str = ""):
        """make(), computed once per key and kept (models, and what the apps derive from them). Two requests
        for the same key wait for one computation; requests for other keys do not wait. A model that fails
        to load is reported as a ValueError that names it (`what`), so the page shows why."""
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            if key not in self._loaded:
                try:
                    value = make()
                except (OSError, RuntimeError, KeyError) as error:
                    raise ValueError(f"cannot load {what or key}: {error}") from error
                with self._lock:
                    self._loaded[key] = value
        return self._loaded[key]
