"""What the command shows: a progress bar, one layer table and the summary (Lightning's chatter filtered)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from lightning.pytorch.utilities.rank_zero import rank_zero_only

#: Lightning's notice of a debugging limit ("`Trainer(limit_val_batches=1)` was configured so 1
#: batch will be used."), which every Trainer of the job repeats
_TRAINER_LIMIT = re.compile(r"`Trainer\(\w+=[^)]*\)` was configured so")


class _QuietLightning(logging.Filter):
    """What the job shows is a progress bar, one layer table and the summary. This drops
    Lightning's install suggestions ("Tip: ... try installing litlogger"), the per-seed notice,
    the "fit stopped: max_epochs reached" line, the notices of a SIGTERM or a Ctrl-C (the command
    says them, with what to do), that of a weights-averaging checkpoint's state, and repeats of the GPU/TPU availability lines and
    of the notices of ``limit_*_batches`` (every Trainer of the job, evaluation ones included,
    prints them)."""

    def __init__(self, hardware: bool = True):
        super().__init__()
        self.hardware = hardware  # False: the availability and limit lines too (a benchmark's workers)
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (message.startswith("\N{ELECTRIC LIGHT BULB} Tip") or re.match(r"(\[rank: \d+\] )?Seed set to", message)
                or "`Trainer.fit` stopped" in message):  # (a DDP rank's "[rank: 1] Seed set to 0", three times a run)
            return False
        # the command says a SIGTERM or a Ctrl-C itself, with what to do (Lightning calls a SIGTERM
        # in a Trainer's set-up a KeyboardInterrupt); and a resumed run with ema_decay loads its
        # weights from the checkpoint as it should, which needs no notice
        if (re.match(r"(\[rank: \d+\] )?Received SIGTERM", message) or message.startswith("Found current_model_state")
                or message.strip().startswith("Detected KeyboardInterrupt")):
            return False
        if message.startswith(("GPU available", "TPU available", "HPU available")) or _TRAINER_LIMIT.match(message):
            if not self.hardware or message in self.seen:
                return False
            self.seen.add(message)
        return True


#: the loggers whose chatter :class:`_QuietLightning` filters
_CHATTY = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed",
           "lightning.pytorch.trainer.connectors.signal_connector")


@contextlib.contextmanager
def lightning_silenced():
    """Inside it, none of the lines :class:`_QuietLightning` filters (availability lines included),
    and as before after it: for Trainers built only to check a configuration."""
    chatter = _QuietLightning(hardware=False)
    for name in _CHATTY:
        logging.getLogger(name).addFilter(chatter)
    try:
        yield
    finally:
        for name in _CHATTY:
            logging.getLogger(name).removeFilter(chatter)


class _Dropped(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextlib.contextmanager
def lines_dropped(*prefixes: str):
    """Inside it, none of the rank-zero log lines that start with one of ``prefixes``: what the
    command says itself, in its own terms (the callback's advice in Python's, ``Trainer(...)``)."""
    dropped = _Dropped(prefixes)
    logger = logging.getLogger(_CHATTY[0])
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)


class _FailedTrialEcho(logging.Filter):
    """Optuna's sweeper on a trial whose run failed (the job returned ``None``): "Failed experiment:
    Return value must be float-castable. Got 'None'." and "Failed [...] times out of 1 with
    max_failure_rate=0.0.", under the command's own line that says why the run failed and that the
    search goes on (which it does: these say otherwise)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "float-castable. Got 'None'" not in record.getMessage()


#: the loggers of Optuna's Hydra sweeper and of its database layer (which announces each of its
#: plugins as the search starts, "setup plugin alembic.autogenerate.schemas", seven lines)
_SEARCH_LOGGERS = ("hydra_plugins.hydra_optuna_sweeper._impl", "alembic")


def quiet_lightning(hardware: bool = True) -> None:
    """Quiet the job's output (the command calls this; a notebook may too): the GPU/TPU
    availability and ``limit_*_batches`` lines shown once. ``hardware=False`` drops them too: a
    benchmark's worker processes, each of which would repeat them beside the benchmark's own table."""
    chatter = _QuietLightning(hardware)
    for name in _CHATTY:  # (once: each job of a sweep calls this again, in a launcher's worker process too)
        logger = logging.getLogger(name)
        there = [f for f in logger.filters if isinstance(f, _QuietLightning)]
        for f in there:  # (hardware=False still drops the availability lines: a forked benchmark worker's, review)
            f.hardware = f.hardware and hardware
        if not there:
            logger.addFilter(chatter)
    sweeper, database = map(logging.getLogger, _SEARCH_LOGGERS)
    if not any(isinstance(f, _FailedTrialEcho) for f in sweeper.filters):
        sweeper.addFilter(_FailedTrialEcho())
    database.setLevel(max(database.getEffectiveLevel(), logging.WARNING))
    # Lightning 2.6's own pytree helper uses a torch API that torch 2.13 deprecates; nothing a
    # user can change, so this one message is hidden.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    if not getattr(warnings.formatwarning, "_lightning_ssr", False):
        warnings.formatwarning = _own_warnings_plainly(warnings.formatwarning)


#: this package's folder: its warnings are messages to the user, not a line of code to look at
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1]) + os.sep


def _own_warnings_plainly(default):
    """``warning: <message>`` for this package's warnings (their source file and line say nothing
    to a user of the command: ``.../lightning_ssr/pruning.py:335: UserWarning: ...``); others as
    ``default`` formats them."""
    def formatwarning(message, category, filename, lineno, line=None):
        if str(filename).startswith(_PACKAGE_DIR) and issubclass(category, UserWarning):
            # (under DDP every rank warned of the same set-up: rank 0 says it, and records it in the result;
            # Lightning's rank, as the record's, not another variable a cluster may set: review)
            return "" if rank_zero_only.rank != 0 else f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    formatwarning._lightning_ssr = True
    return formatwarning


class _WithoutVersion:
    """A progress bar without ``v_num``, the logger's version, which is 0 in every run's own folder
    (and was shown as ``v_num: 0.000``)."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class RichBar(_WithoutVersion, RichProgressBar):
    """Lightning's Rich progress bar without ``v_num``."""


class TQDMBar(_WithoutVersion, TQDMProgressBar):
    """Lightning's tqdm progress bar without ``v_num``."""


def progress_bars(trainer_cfg) -> list:
    """The job's progress bar for a Trainer built from ``trainer_cfg`` (none when it disables the
    bar): Lightning's own choice (Rich where installed, else tqdm), without ``v_num``. Defined at
    module level, so that a Trainer holding it pickles (``ddp_spawn``)."""
    if not trainer_cfg.get("enable_progress_bar", True):
        return []
    return [RichBar() if _RICH_AVAILABLE else TQDMBar()]
