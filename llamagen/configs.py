"""What the model configs share: a dict round trip that names unknown fields, range checks, presets."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self


class ModelConfig:
    """Mixin for the dataclass configs (VQConfig, GPTConfig); `PRESETS` maps names to field overrides."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    PRESET_KIND: ClassVar[str] = "model"  # for messages: "unknown tokenizer preset ..."

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        if not isinstance(values, dict):
            raise ValueError(f"a {cls.__name__} is read from an object of its fields, not a {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known fields are {sorted(known)}")
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Self:
        """The config of a named preset, with optional field overrides."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.PRESET_KIND} preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        return cls.from_dict({**cls.PRESETS[name], **overrides})

    @classmethod
    def coerce(cls, config: Self | dict[str, Any] | str) -> Self:
        """A config from a config, a dict of its fields, or a preset name."""
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        if isinstance(config, str):
            return cls.preset(config)
        raise TypeError(
            f"config must be a {cls.__name__}, a dict of its fields or a preset name, not {type(config).__name__}"
        )

    def require_positive_ints(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive integer, got {value!r}")

    def require_probabilities(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{type(self).__name__}.{name} must be in [0, 1), got {value}")
