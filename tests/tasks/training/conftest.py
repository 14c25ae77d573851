"""One torch thread in the trainer's tests: on a shared 2-core machine two OpenMP threads that
wait for each other made tiny-model steps ~25x slower (0.7 s instead of 0.03 s) under load."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
