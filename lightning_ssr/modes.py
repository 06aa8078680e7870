"""Train/eval mode, set for a while and given back."""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(*models: nn.Module):
    """``models`` in eval mode for the duration, each module in them given back the mode it had
    (also after an error), submodules too: a user may keep a part in eval mode while the rest
    trains (frozen BatchNorm statistics), and measuring, tracing and checking a model must not
    change how it trains next."""
    modes = {module: module.training for m in models for module in m.modules()}
    try:
        for m in models:
            m.eval()
        yield models[0] if len(models) == 1 else models
    finally:
        for m in models:
            m.train(modes[m])  # the model's own train(), where it overrides it
        for module, mode in modes.items():
            module.training = mode
