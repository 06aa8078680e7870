"""lightning_ssr: filter pruning inside PyTorch Lightning; the model shrinks for real."""

from .checkpoint import CheckpointReadError, PrunedCheckpointMixin, load_pruned, read_checkpoint, save_pruned
from .cost import count_cost
from .engine import PruningEngine, World
from .methods import (
                      AULM,
                      SSR,
                      AULMStats,
                      OneShot,
                      PruningMethod,
                      available_methods,
                      build_method,
                      prune_oneshot,
                      register_method,
)
from .methods.prox import group_hard_threshold, group_soft_threshold, keep_top_k
from .pruning import Pruning, SSRPruning
from .report import PruningResult
from .schedule import PruningSchedule, end_cosine_at, end_cosines
from .structure import (
                      PLAN_CHECKPOINT_KEY,
                      ChannelGroup,
                      PlanMismatchError,
                      PruningPlan,
                      UnsupportedLayerError,
                      apply_plan,
                      find_channel_groups,
                      prune_channels,
)
from .targets import Target

__all__ = [
                      "AULM",
                      "PLAN_CHECKPOINT_KEY",
                      "SSR",
                      "AULMStats",
                      "ChannelGroup",
                      "CheckpointReadError",
                      "OneShot",
                      "PlanMismatchError",
                      "PrunedCheckpointMixin",
                      "Pruning",
                      "PruningEngine",
                      "PruningMethod",
                      "PruningPlan",
                      "PruningResult",
                      "PruningSchedule",
                      "SSRPruning",
                      "Target",
                      "UnsupportedLayerError",
                      "World",
                      "apply_plan",
                      "available_methods",
                      "build_method",
                      "count_cost",
                      "end_cosine_at",
                      "end_cosines",
                      "find_channel_groups",
                      "group_hard_threshold",
                      "group_soft_threshold",
                      "keep_top_k",
                      "load_pruned",
                      "prune_channels",
                      "prune_oneshot",
                      "read_checkpoint",
                      "register_method",
                      "save_pruned",
]
__version__ = "0.2.0"
