"""Shared test fixtures."""
import pytest
import torch


def _one_thread():
    """One torch intra-op thread while the fixture lives: the tiny models of the tests gain nothing from
    more, and on a busy machine extra threads slow down badly. Results do not depend on it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def one_torch_thread():
    """One torch thread for one test (see _one_thread)."""
    yield from _one_thread()


@pytest.fixture(scope="module")
def one_torch_thread_module():
    """One torch thread for a whole test module (see _one_thread)."""
    yield from _one_thread()
