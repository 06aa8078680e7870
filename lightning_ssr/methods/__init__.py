"""Pruning methods behind one protocol, found by name through a registry.

A method is one module in this package that registers itself (:func:`register_method`) when the
package imports it: every module here is imported below, so adding a method is adding its file
(and its config and tests). Methods outside the package register the same way when their module
is imported (``plugins:`` in the command's configuration), or through the entry point group
``lightning_ssr.methods`` of an installed distribution.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .base import (
    MethodContext,
    PruningMethod,
    available_methods,
    build_method,
    method_table,
    register_method,
    top_k_masks,
)

for _module in _pkgutil.iter_modules(__path__):  # every method module registers itself on import
    _importlib.import_module(f"{__name__}.{_module.name}")

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
    "method_table",
    "prune_oneshot",
    "register_method",
    "resolve_lam",
    "top_k_masks",
]
