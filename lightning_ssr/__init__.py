"""lightning_ssr: structured-sparsity filter pruning inside PyTorch Lightning."""

from .aulm import AULM, AULMStats
from .callback import PrunedCheckpointMixin, SSRPruning
from .flops import count_cost
from .groups import ChannelGroup, UnsupportedLayerError, find_channel_groups
from .plan import PLAN_CHECKPOINT_KEY, PlanMismatchError, PruningPlan, apply_plan, load_pruned, prune_channels
from .prox import group_hard_threshold, group_soft_threshold, keep_top_k
from .schedule import PruningSchedule

__all__ = [
    "AULM",
    "PLAN_CHECKPOINT_KEY",
    "AULMStats",
    "ChannelGroup",
    "PlanMismatchError",
    "PrunedCheckpointMixin",
    "PruningPlan",
    "PruningSchedule",
    "SSRPruning",
    "UnsupportedLayerError",
    "apply_plan",
    "count_cost",
    "find_channel_groups",
    "group_hard_threshold",
    "group_soft_threshold",
    "keep_top_k",
    "load_pruned",
    "prune_channels",
]
__version__ = "0.1.0"
