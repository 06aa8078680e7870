"""Train/eval mode, set for a while and given back."""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(*models: nn.Module):
    """``models`` in eval mode for the duration, each given back the mode it had (also after an
    error): measuring, tracing and checking a model must not change how it trains next."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield models[0] if len(models) == 1 else models
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
