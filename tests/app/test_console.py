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


def test_the_packages_own_warnings_read_as_a_line_to_the_user_others_as_python_formats_them(monkeypatch):
    """``.../lightning_ssr/pruning.py:335: UserWarning: ...`` names a line of the package's code,
    which says nothing to a user of the command: ``warning: ...``. Others' warnings keep Python's format."""
    import warnings
    from pathlib import Path

    import lightning_ssr.pruning
    from lightning_ssr.app.console import quiet_lightning

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # given back after the test
    quiet_lightning()
    wrapped = warnings.formatwarning
    quiet_lightning()
    assert warnings.formatwarning is wrapped  # (a second call does not wrap it again)
    ours = str(Path(lightning_ssr.pruning.__file__))
    assert warnings.formatwarning("ends before the prune", UserWarning, ours, 335) == "warning: ends before the prune\n"
    theirs = warnings.formatwarning("old API", UserWarning, "/elsewhere/lib.py", 7)
    assert theirs.startswith("/elsewhere/lib.py:7: UserWarning: old API")
    assert warnings.formatwarning("x", DeprecationWarning, ours, 1).startswith(ours)  # (for developers)


def test_lightnings_interruption_and_averaging_checkpoint_notices_are_dropped_others_kept():
    """The command tells a SIGTERM itself (where it stopped, the checkpoint, exit code 143), and a
    resumed run with ema_decay loads the checkpoint's weights as it should: Lightning's lines for
    both ("[rank: 0] Received SIGTERM: 15", "Found current_model_state in the checkpoint...") were noise;
    and Lightning called a SIGTERM in a Trainer's set-up a KeyboardInterrupt."""
    import logging

    from lightning_ssr.app.console import _QuietLightning

    def shown(message):
        return _QuietLightning().filter(logging.LogRecord("lightning", logging.INFO, __file__, 1, message, None, None))

    assert not shown("[rank: 0] Received SIGTERM: 15")
    assert not shown("Received SIGTERM: 15")
    assert not shown("\nDetected KeyboardInterrupt, attempting graceful shutdown ...")
    assert not shown("Found current_model_state in the checkpoint. This will be used to initialize the model.")
    assert shown("Restoring states from the checkpoint path at e.ckpt")
    assert shown("Received SIGUSR1: 10")


def test_a_benchmark_worker_drops_the_availability_and_limit_lines_the_command_shows_once():
    """Each worker of a benchmark's pool printed "GPU available: False, used: False" beside its table."""
    import logging

    from lightning_ssr.app.console import _QuietLightning

    def record(message):
        return logging.LogRecord("lightning", logging.INFO, __file__, 1, message, None, None)

    lines = ["GPU available: False, used: False", "`Trainer(limit_val_batches=1)` was configured so 1 batch will be used."]
    command, worker = _QuietLightning(), _QuietLightning(hardware=False)
    assert [command.filter(record(m)) for m in lines * 2] == [True, True, False, False]
    assert not any(worker.filter(record(m)) for m in lines)
    assert worker.filter(record("Restoring states from the checkpoint path at e.ckpt"))


def test_quieting_again_without_the_hardware_lines_drops_them():
    """A benchmark quiets Lightning (its hardware lines kept), then its forked workers quiet it
    without them: the second call found a filter there already and left the lines on (review)."""
    import logging

    from lightning_ssr.app.console import _CHATTY, _QuietLightning, quiet_lightning

    logger = logging.getLogger(_CHATTY[0])
    before = list(logger.filters)
    try:
        for f in [f for f in logger.filters if isinstance(f, _QuietLightning)]:
            logger.removeFilter(f)
        quiet_lightning()
        quiet_lightning()  # (once: a sweep's every job calls it)
        there = [f for f in logger.filters if isinstance(f, _QuietLightning)]
        assert len(there) == 1 and there[0].hardware
        quiet_lightning(hardware=False)
        assert [f.hardware for f in logger.filters if isinstance(f, _QuietLightning)] == [False]
    finally:
        logger.filters[:] = before
