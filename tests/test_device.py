import threading

import pytest
import torch

from lmscope.device import one_thread, one_thread_each


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_one_thread_each_maps_in_order_on_one_thread_per_item(two_threads):
    seen = []

    def square(i):
        seen.append((torch.get_num_threads(), threading.get_ident()))
        return i * i

    assert one_thread_each(square, range(50)) == [i * i for i in range(50)]
    assert {threads for threads, _ in seen} == {1}
    assert len({ident for _, ident in seen}) <= 2  # at most torch.get_num_threads() at once
    assert torch.get_num_threads() == 2  # restored


def test_one_thread_each_reads_a_generator_lazily_and_passes_its_errors_on(two_threads):
    pulled = []

    def items():
        for i in range(1000):
            pulled.append(i)
            if i == 20:
                raise KeyError("stop")
            yield i

    with pytest.raises(KeyError, match="stop"):
        one_thread_each(lambda i: i, items())
    assert len(pulled) == 21  # nothing read past the error
    assert torch.get_num_threads() == 2

    def fails(i):
        if i == 3:
            raise ValueError("item 3")
        return i

    with pytest.raises(ValueError, match="item 3"):
        one_thread_each(fails, range(10))
    assert torch.get_num_threads() == 2


def test_one_thread_each_runs_other_devices_in_this_thread(two_threads):
    here = threading.get_ident()
    seen = one_thread_each(lambda i: (torch.get_num_threads(), threading.get_ident()), range(3),
                           device="meta")
    assert seen == [(2, here)] * 3


def test_one_thread_restores_the_count_after_an_error(two_threads):
    with pytest.raises(RuntimeError), one_thread():
        assert torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == 2
