"""Settings for the whole test session."""

import pytest
import torch

# The tests run small models, for which a second intra-op thread buys little, while OpenMP's
# busy-waiting threads slow down many-fold whenever the cores are shared (the DDP test's
# subprocesses, or any other job): on a loaded 2-core machine the suite took 593 s with two
# threads and 94 s with one.
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped (with that reason) when none is visible")


@pytest.fixture
def sigint_kept(monkeypatch):
    """Lightning ignores SIGINT for good once it shut an interrupted fit down: not in this process."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(signal, "signal", lambda *args: handler)
