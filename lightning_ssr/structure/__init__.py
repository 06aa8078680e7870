"""Method-free structure: coupled channel groups, pruning plans and the physical rebuild."""

from .groups import (
    ChannelGroup,
    GroupSlice,
    UnsupportedLayerError,
    align_blocks,
    build_dependency_graph,
    find_channel_groups,
)
from .plan import PLAN_CHECKPOINT_KEY, PlanMismatchError, PruningPlan, plan_from_support
from .surgery import apply_plan, prune_channels, remap_optimizer

__all__ = [
    "PLAN_CHECKPOINT_KEY",
    "ChannelGroup",
    "GroupSlice",
    "PlanMismatchError",
    "PruningPlan",
    "UnsupportedLayerError",
    "align_blocks",
    "apply_plan",
    "build_dependency_graph",
    "find_channel_groups",
    "plan_from_support",
    "prune_channels",
    "remap_optimizer",
]
