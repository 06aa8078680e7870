"""Pruning methods behind one protocol, found by name through a registry."""

from . import oneshot, ssr  # noqa: F401  (registers the methods)
from .base import MethodContext, PruningMethod, available_methods, build_method, register_method, top_k_masks
from .oneshot import OneShot, prune_oneshot
from .ssr import AULM, SSR, AULMStats, resolve_lam

__all__ = [
    "AULM",
    "SSR",
    "AULMStats",
    "MethodContext",
    "OneShot",
    "PruningMethod",
    "available_methods",
    "build_method",
    "prune_oneshot",
    "register_method",
    "resolve_lam",
    "top_k_masks",
]
