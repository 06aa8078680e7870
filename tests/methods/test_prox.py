import pytest
import torch

from lightning_ssr.methods.prox import group_hard_threshold, group_soft_threshold, keep_top_k, protect_largest


def test_soft_threshold_hand_computed():
    # groups [3, 4] (norm 5), [0, 0] (zero group), [0.6, 0.8] (norm 1, exactly at the threshold), [6, 8] (norm 10)
    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.6, 0.8], [6.0, 8.0]], dtype=torch.float64)
    scale = group_soft_threshold(rows.norm(dim=1), 1.0)
    assert torch.allclose(scale, torch.tensor([0.8, 0.0, 0.0, 0.9], dtype=torch.float64))
    v = rows * scale[:, None]
    assert torch.allclose(v[0], torch.tensor([2.4, 3.2], dtype=torch.float64))
    assert torch.allclose(v[3], torch.tensor([5.4, 7.2], dtype=torch.float64))
    assert torch.equal(v[1], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(v[2], torch.zeros(2, dtype=torch.float64))  # a tie at the threshold is zeroed


def test_soft_threshold_per_group_thresholds_and_zero_threshold():
    norms = torch.tensor([2.0, 2.0, 0.0])
    assert torch.allclose(group_soft_threshold(norms, torch.tensor([1.0, 0.5, 0.0])), torch.tensor([0.5, 0.75, 0.0]))
    assert torch.allclose(group_soft_threshold(torch.tensor([2.0]), 0.0), torch.tensor([1.0]))


def test_hard_threshold_hand_computed():
    # keep where ||T||^2 > 2 * thr; thr = 2 -> keep where norm^2 > 4, i.e. norm > 2; norm exactly 2 is zeroed
    norms = torch.tensor([3.0, 2.0, 1.9, 0.0])
    assert torch.equal(group_hard_threshold(norms, 2.0), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert torch.equal(group_hard_threshold(norms, 0.0), torch.tensor([1.0, 1.0, 1.0, 0.0]))


def test_negative_threshold_is_refused():
    with pytest.raises(ValueError, match=">= 0"):
        group_soft_threshold(torch.ones(2), -1.0)
    with pytest.raises(ValueError, match=">= 0"):
        group_hard_threshold(torch.ones(2), -0.1)


def test_keep_top_k_with_ties_prefers_lower_index():
    norms = torch.tensor([1.0, 3.0, 2.0, 3.0, 0.0])
    assert torch.equal(keep_top_k(norms, 2), torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))
    assert torch.equal(keep_top_k(torch.tensor([1.0, 1.0, 1.0]), 1), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(keep_top_k(norms, 0), torch.zeros(5))
    assert torch.equal(keep_top_k(norms, 5), torch.ones(5))
    with pytest.raises(ValueError):
        keep_top_k(norms, 6)


def test_protect_largest_restores_the_largest_zeroed_groups():
    norms = torch.tensor([0.1, 0.3, 0.2])
    scale = group_soft_threshold(norms, 1.0)
    assert torch.equal(protect_largest(scale, norms, 1), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(protect_largest(scale, norms, 2), torch.tensor([0.0, 1.0, 1.0]))
    kept = torch.tensor([0.5, 0.0, 0.0])
    assert torch.equal(protect_largest(kept, norms, 1), kept)
