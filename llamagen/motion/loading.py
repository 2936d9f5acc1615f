"""Loading the motion models the project saves: their files carry their configs."""

from __future__ import annotations

import os

from torch import nn

from llamagen.checkpoints import load_into, read_model_checkpoint


def load_saved_model(source: str | os.PathLike, model_class: type[nn.Module], config_class: type) -> nn.Module:
    """A model saved by `llamagen.save`, strictly loaded on the CPU in eval mode; refused if the file is another
    kind of model or carries no config."""
    path, contents = read_model_checkpoint(source, model_class.checkpoint_kind)
    if contents.config is None:
        raise ValueError(f"{str(path)!r} carries no config: it is not a model the project saved")
    config = config_class(**contents.config)
    return load_into(lambda: model_class(config), contents, path, "cpu", None)
