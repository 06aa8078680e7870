"""Recipes: jobs other than the default one, each chosen by a top-level section of the
configuration (``transfer:``, ``adaptation:``) and found through a registry, as pruning methods
are. A recipe is one module here that calls :func:`register_recipe` with its section name, the
function that runs the job (``(cfg, output_dir) -> PruningResult``, built from
:mod:`lightning_ssr.app.stages`) and the one that summarizes its result in a line."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Recipe:
    section: str
    run: Callable
    summary: Callable
    #: its settings checked without data or a network (``(cfg) -> None``, raising): the command's
    #: checks of every run of a sweep, and the benchmarks', run it before anything trains
    check: Callable | None = None


_RECIPES: dict[str, Recipe] = {}


def register_recipe(section: str, run: Callable, summary: Callable, check: Callable | None = None) -> Recipe:
    """Register the job of configurations that hold a ``section`` (not ``None``)."""
    if section in _RECIPES and _RECIPES[section].run is not run:
        raise ValueError(f"a recipe for the configuration section {section!r} is already registered")
    _RECIPES[section] = Recipe(section, run, summary, check)
    return _RECIPES[section]


def last_linear(model: nn.Module, owner: str) -> tuple[str, nn.Linear]:
    """The network's last ``nn.Linear`` (the classification head the recipes replace or read the
    features of): its name and the module; ``owner`` names the recipe in the refusal of a network
    without one."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{owner} needs a network whose last nn.Linear is the classifier; {type(model).__name__} "
                         "has no nn.Linear")
    return linears[-1]


def available_recipes() -> list[str]:
    return sorted(_RECIPES)


def recipe_for(cfg) -> Recipe | None:
    """The recipe whose section ``cfg`` holds; ``None`` for the default job. Two sections at once
    are refused."""
    found = [r for name, r in sorted(_RECIPES.items()) if cfg.get(name) is not None]
    if len(found) > 1:
        raise ValueError(f"the configuration holds the sections of several recipes {[r.section for r in found]}; a "
                         "job runs one: give one experiment alone (+experiment=<name>)")
    return found[0] if found else None


for _module in pkgutil.iter_modules(__path__):  # every recipe module registers itself
    importlib.import_module(f"{__name__}.{_module.name}")
