"""Loading the motion models the project saves: their files carry their configs."""

from __future__ import annotations

import os
from collections.abc import Callable

from torch import nn

from llamagen.checkpoints import load_into, read_model_checkpoint


def load_saved_model(source: str | os.PathLike, kind: str, build: Callable[[dict], nn.Module]) -> nn.Module:
    """The model `build(config)` makes from the config a file saved by `llamagen.save` carries, strictly loaded
    on the CPU in eval mode; refused if the file is another kind of model or carries no config."""
    path, contents = read_model_checkpoint(source, kind)
    if contents.config is None:
        raise ValueError(f"{str(path)!r} carries no config: it is not a model the project saved")
    return load_into(lambda: build(contents.config), contents, path, "cpu", None)
