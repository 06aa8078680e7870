"""Pruning methods behind one protocol, found by name through a registry."""

from . import bn_scale, fsm, oneshot, ssl, ssr, taylor  # noqa: F401  (registers the methods)
from .base import MethodContext, PruningMethod, available_methods, build_method, register_method, top_k_masks
from .bn_scale import BNScale
from .fsm import FSM, expected_relu, fsm_importance
from .oneshot import L1, OneShot, RandomPruning, prune_oneshot
from .ssl import SSL
from .ssr import AULM, SSR, AULMStats, resolve_lam
from .taylor import Taylor

__all__ = [
    "AULM",
    "FSM",
    "L1",
    "SSL",
    "SSR",
    "AULMStats",
    "BNScale",
    "MethodContext",
    "OneShot",
    "PruningMethod",
    "RandomPruning",
    "Taylor",
    "available_methods",
    "build_method",
    "expected_relu",
    "fsm_importance",
    "prune_oneshot",
    "register_method",
    "resolve_lam",
    "top_k_masks",
]
