"""What the command shows: its progress bar."""

import pickle
from types import SimpleNamespace

from lightning.pytorch.callbacks import ProgressBar
from omegaconf import OmegaConf

from lightning_ssr.app.console import progress_bars


def test_the_jobs_progress_bar_shows_the_metrics_but_not_the_logger_version():
    # every run logs as version 0 in its own folder: the bar showed "v_num: 0.000"
    (bar,) = progress_bars(OmegaConf.create({"enable_progress_bar": True}))
    assert isinstance(bar, ProgressBar)
    trainer = SimpleNamespace(loggers=[SimpleNamespace(version=0)], progress_bar_metrics={"val_acc": 0.5})
    assert bar.get_metrics(trainer, None) == {"val_acc": 0.5}
    assert progress_bars(OmegaConf.create({"enable_progress_bar": False})) == []  # Lightning refuses a bar then
    assert isinstance(pickle.loads(pickle.dumps(bar)), type(bar))  # a Trainer holding it pickles (ddp_spawn)
