"""What the command shows: a progress bar, one layer table and the summary (Lightning's chatter filtered)."""

from __future__ import annotations

import logging
import warnings


class _QuietLightning(logging.Filter):
    """What the job shows is a progress bar, one layer table and the summary. This drops
    Lightning's install suggestions ("Tip: ... try installing litlogger"), the per-seed notice,
    the "fit stopped: max_epochs reached" line, and repeats of the GPU/TPU availability lines
    (every Trainer of the job, evaluation ones included, prints them)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(("\N{ELECTRIC LIGHT BULB} Tip", "Seed set to")) or "`Trainer.fit` stopped" in message:
            return False
        if message.startswith(("GPU available", "TPU available", "HPU available")):
            if message in self.seen:
                return False
            self.seen.add(message)
        return True


def quiet_lightning() -> None:
    """Quiet the job's output (the command calls this; a notebook may too)."""
    chatter = _QuietLightning()
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(name).addFilter(chatter)
    # Lightning 2.6's own pytree helper uses a torch API that torch 2.13 deprecates; nothing a
    # user can change, so this one message is hidden.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
