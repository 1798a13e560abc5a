"""Fixtures shared by the federated-learning tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """These models are tiny: OpenMP threads only add synchronisation (badly so on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
