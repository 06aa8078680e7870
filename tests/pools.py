"""A stand-in for the benchmarks' pool of worker processes (``benchmarks.job_pool``) in their tests."""

from concurrent.futures import Future


class InlinePool:
    """Runs each job when it is submitted, in this process, in the order of submission."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args) -> Future:
        future = Future()
        future.set_result(fn(*args))
        return future
