"""privfl.parallel: worker threads and processes give the same results as a plain loop."""

from __future__ import annotations

import torch
from torch import nn

from privfl.parallel import thread_map, torch_threads


def test_thread_map_keeps_order_and_runs_torch_single_threaded():
    seen = thread_map(lambda i: (i, torch.get_num_threads()), 12)
    assert [i for i, _ in seen] == list(range(12))
    assert {n for _, n in seen} == {1}


def test_per_sample_backward_in_threads_is_bit_identical_to_a_loop():
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 16, batch_first=True)
    xs = [torch.randn(1, 20 + 7 * i, 8) for i in range(6)]

    def grad(i: int) -> tuple[torch.Tensor, ...]:
        out, _ = lstm(xs[i])
        return torch.autograd.grad(out.mean(), list(lstm.parameters()))

    with torch_threads(1):
        loop = [grad(i) for i in range(len(xs))]
    threaded = thread_map(grad, len(xs))
    for a, b in zip(loop, threaded, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_thread_map_reports_progress_in_order_from_the_calling_thread():
    import threading

    calls = []
    caller = threading.get_ident()
    out = thread_map(lambda i: i * i, 7, lambda done, n: calls.append((done, n, threading.get_ident())))
    assert out == [i * i for i in range(7)]
    assert [(d, n) for d, n, _ in calls] == [(d, 7) for d in range(1, 8)]
    assert {t for _, _, t in calls} == {caller}


def test_per_thread_gives_each_thread_its_own_object_built_once():
    import threading

    from privfl.parallel import PerThread

    built = []
    lock = threading.Lock()

    def make() -> list:
        with lock:
            built.append(threading.get_ident())
        return []

    per = PerThread(make)

    def item(i: int) -> int:
        own = per.get()
        own.append(i)
        assert per.get() is own  # the same object again on this thread
        return threading.get_ident()

    threads = thread_map(item, 40)
    assert sorted(built) == sorted(set(threads))  # one object per thread that ran an item, no more
    assert per.get() is per.get() and per.get() == []  # this thread's own, untouched by the workers
