"""Method specs shared by the comparison benchmarks: ``<method>@<allocation>`` (``ssr_l21@method``,
``l1@uniform``; a bare name takes the method's default allocation), or ``none``: the dense model
fine-tuned for the same epochs, unpruned (the equal-budget reference)."""

from __future__ import annotations

import argparse
import functools

from lightning_ssr.methods import available_methods, build_method

#: the seeds a LeNet-5 table runs unless told otherwise (``benchmarks/lenet.py --seeds``)
LENET_SEEDS = (0, 1, 2, 3, 4)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"ssr_l21@method"`` -> ``("ssr_l21", "method")``; ``"l1"`` -> ``("l1", None)`` (its default)."""
    name, _, allocation = spec.partition("@")
    return name, allocation or None


def given_structure(spec: str) -> list[int] | None:
    """The per-layer counts a spec names in place of its allocation (``l1@1-16-65``: a structure
    given by hand, not one any method chose), or ``None``."""
    counts = (parse_spec(spec)[1] or "").split("-")
    return [int(c) for c in counts] if all(c.isdigit() for c in counts) else None


def spec_overrides(spec: str) -> list[str]:
    """The job's overrides for a method spec: the method, its target section, its allocation."""
    name, allocation = parse_spec(spec)
    if name == "none":
        return ["pruning=none"]
    out = [f"pruning={name}", "target=macs"]
    return out + ([f"target.allocation={allocation}"] if allocation else [])


@functools.cache
def pruning_keys(name: str) -> frozenset[str]:
    """The keys of method ``name``'s pruning config as the app composes it (``pruning=<name>``)."""
    from lightning_ssr.app.cli import compose_config

    return frozenset(compose_config([f"pruning={name}"]).pruning)


def _pruning_key(override: str) -> str | None:
    """``"pruning.rho=1.0"`` -> ``"rho"``: the key of the pruning config an override sets or deletes;
    ``None`` for another section, and for ``+pruning.<key>=...``, which adds the key to any config."""
    path = override.split("=", 1)[0]
    if not path.lstrip("+~").startswith("pruning.") or (path.startswith("+") and not path.startswith("++")):
        return None
    return path.lstrip("+~").split(".")[1]


def extra_overrides(spec: str, extra: list[str]) -> list[str]:
    """The benchmark's ``--override`` entries that apply to a run of ``spec``: every entry, but a run
    that prunes nothing (``none``, and the dense model's job) takes no ``pruning.*`` entry, and a
    ``pruning.<key>`` entry only reaches the methods whose pruning config has that key
    (``pruning.rho=1.0`` sets the SSR runs' rho; the ``l1`` runs, whose config has no ``rho``,
    compose without it). :func:`check_pruning_overrides` refuses a key that no method has."""
    name = parse_spec(spec)[0]
    if name == "none":
        return [o for o in extra if not o.lstrip("+~").startswith("pruning.")]
    return [o for o in extra if (key := _pruning_key(o)) is None or key in pruning_keys(name)]


def check_pruning_overrides(extra: list[str], specs: list[str]) -> None:
    """Raise ``ValueError`` for a ``pruning.<key>`` override that no method among ``specs`` has (a
    typo would otherwise reach no run at all)."""
    names = sorted({parse_spec(s)[0] for s in specs} - {"none"})
    for o in extra:
        key = _pruning_key(o)
        if key is not None and not any(key in pruning_keys(n) for n in names):
            keys = sorted(set().union(*(pruning_keys(n) for n in names)) - {"name"}) if names else []
            raise ValueError(f"--override {o}: none of the methods {names} has pruning.{key} (their keys: {keys})")


def is_oneshot(spec: str) -> bool:
    """No training-time term (and ``none``): the whole budget is fine-tuning."""
    name, _ = parse_spec(spec)
    return name == "none" or not build_method(name).sparsifies


def check_spec(spec: str) -> str:
    """An argparse type: a registered method (or ``none``) with an allocation that applies to it."""
    from lightning_ssr.targets import ALLOCATIONS, Budget

    name, allocation = parse_spec(spec)
    if name == "none":
        if "@" in spec:  # (none@bogus ran as none, and the report's headline named it the best compression)
            raise argparse.ArgumentTypeError(f"{spec!r}: none prunes nothing and takes no allocation; give none")
        return spec
    if name not in available_methods():
        raise argparse.ArgumentTypeError(f"unknown method {name!r}; available: {available_methods()} or none")
    if allocation is not None and allocation not in ALLOCATIONS:
        raise argparse.ArgumentTypeError(f"{spec}: allocation must be one of {ALLOCATIONS}")
    try:
        Budget({"macs": 0.5}, allocation=allocation).allocation_for(build_method(name))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return spec


def registry_specs() -> list[str]:
    """Every registered method with each allocation that applies to it (its own structure where it
    learns one, uniform, global), and ``none``: what a comparison of every method runs."""
    from lightning_ssr.targets import ALLOCATIONS, Budget

    specs = []
    for name in available_methods():
        method = build_method(name)
        for allocation in ALLOCATIONS:
            try:
                Budget({"macs": 0.5}, allocation=allocation).allocation_for(method)
            except ValueError:
                continue
            specs.append(f"{name}@{allocation}")
    return specs + ["none"]
