"""Choosing where a model runs (cpu, cuda (cuda:N) or mps), and how a CPU's threads share
independent pieces of work."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from lmscope.errors import LmscopeError


def pick_device(name: str) -> torch.device:
    """A torch device from "auto" (cuda, else mps, else cpu), "cpu", "cuda", "cuda:N" or "mps"."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise LmscopeError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LmscopeError(f"device {name} asked for, but CUDA is not available here")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise LmscopeError(f"device {name} asked for, but this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise LmscopeError(f"device {name} asked for, but MPS is not available here")
        if device.type not in ("cpu", "cuda", "mps"):
            raise LmscopeError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch's operations on one intra-op thread inside the block (the count is restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread_each(fn: Callable, items: Iterable, device: torch.device | str = "cpu") -> list:
    """`[fn(item) for item in items]`, where on a CPU each item is computed on one thread and up
    to torch.get_num_threads() items at once (on other devices: one after another).

    Each item's result is then the same whatever the thread count, and a small model's
    matrices are too small for torch's intra-op threads to pay: on 2 cores the whole-split loss
    of the shakespeare-char-cpu model ran at 60.1 thousand tokens/s with 2 threads on each batch
    and 68.8 thousand one thread per batch (1.15x; the baby GPT's larger matrices: 0.95x;
    `python benchmarks/threads.py`). `items` is read lazily, a few per thread at a time, so it
    may be a generator (what it raises goes to the caller); grad mode and autocast are per
    thread, so `fn` sets its own."""
    if torch.device(device).type != "cpu":
        return [fn(item) for item in items]
    threads = torch.get_num_threads()
    with one_thread():
        if threads == 1:
            return [fn(item) for item in items]
        items, results = iter(items), []
        with ThreadPoolExecutor(threads) as pool:
            while chunk := list(itertools.islice(items, 4 * threads)):
                results.extend(pool.map(fn, chunk))
        return results
