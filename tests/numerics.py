"""How the tests compare two models' outputs: tolerances from what is compared, never from one host.

A rebuilt model computes the masked model's function with the zeroed channels left out of its
sums, so the two differ only by rounding in the order of summation. The tests compare them the
way the engine does (:func:`lightning_ssr.structure.surgery.check_outputs`): both evaluated in
float64, within :func:`~lightning_ssr.structure.surgery.rebuild_tolerance` (a bound of n * u per
dot product of n terms, with room for growth through the layers), which no host's rounding comes
near and which any wrong channel mapping exceeds by orders of magnitude.
"""

from __future__ import annotations

import torch

from lightning_ssr.structure.surgery import check_outputs, rebuild_tolerance


def max_relative_diff(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Largest absolute difference over the largest reference magnitude (at least 1)."""
    scale = max(1.0, float(reference.abs().max()))
    return float((reference.double() - other.double()).abs().max()) / scale


def assert_same_function(reference: torch.nn.Module, model: torch.nn.Module, x) -> None:
    """``model`` gives ``reference``'s outputs on ``x`` (eval mode, float64)."""
    ref, _ = check_outputs(reference, x, "float64")
    out, _ = check_outputs(model, x, "float64")
    assert len(ref) == len(out)
    for r, o in zip(ref, out):
        assert r.shape == o.shape
        diff = max_relative_diff(r, o)
        assert diff <= rebuild_tolerance(torch.float64), f"outputs differ by {diff:.3g} (relative) in float64"


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the distance from 1.0 to the next representable number."""
    return torch.finfo(dtype).eps / 2


def implementations_tolerance(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> float:
    """Relative tolerance (to the largest output, at least 1) between two implementations of the
    same network in ``dtype`` (ONNX Runtime's kernels and PyTorch's, eager and traced): each dot
    product of n terms is within n * u of exact, so the layers together add up to at most the sum
    of their fan-ins times u, whichever order either implementation sums in."""
    fan_in = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            fan_in += (m.in_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())
        elif isinstance(m, torch.nn.Linear):
            fan_in += m.in_features
    return fan_in * unit_roundoff(dtype)


def float_sum_tolerance(n_terms: int, dtype: torch.dtype = torch.float32) -> float:
    """Relative bound, to the sum of the magnitudes involved, on a value computed in ``dtype``
    whose longest chain is a sum of ``n_terms`` terms followed by a few elementwise operations
    (a norm, a division, a multiply-add): (n + 4) * u, whatever order the host sums in."""
    return (n_terms + 4) * unit_roundoff(dtype)


def assert_within_sum_bound(got: torch.Tensor, expected: torch.Tensor, magnitude: torch.Tensor, n_terms: int,
                            dtype: torch.dtype = torch.float32) -> None:
    """``|got - expected| <= float_sum_tolerance(n_terms) * magnitude`` elementwise (``expected``
    exact, e.g. computed in float64 from the same inputs; ``magnitude``: the sum of the absolute
    values of the terms that made it)."""
    bound = float_sum_tolerance(n_terms, dtype) * magnitude.double() + torch.finfo(dtype).tiny
    err = (got.double() - expected.double()).abs()
    assert bool((err <= bound).all()), f"off by up to {float((err / bound).max()):.3g} times the rounding bound"
