"""Running a study's independent units of work side by side, each in its own process.

A unit is one piece of a study that can run on its own once what it needs has finished: a
training run, a transfer pair, a probe of one model. `run_units(units, jobs=N)` starts every
unit whose needs are done, up to N at once, each in a process of its own (multiprocessing's
spawn):

    devices    with GPUs, each unit gets `gpus` of them (1 by default) that no other running unit
               holds, through CUDA_VISIBLE_DEVICES (`DevicePool`), in a fresh process (CUDA reads
               that variable once); a unit asking for more GPUs than the machine has is refused
               before anything starts
    threads    without GPUs, N worker processes take the units in turn, each with
               torch.set_num_threads(cores // N) (at least 1), instead of N processes each
               taking every core; a worker starts once (its imports take seconds, more than
               many units' work) and a unit that kills its worker fails alone

The scheduler waits for a state (a unit's outcome, a process's exit), never for a time. A worker
ends as soon as the study's process is gone (even killed with SIGKILL), so the same command can
continue the study. A unit that fails (an
exception, or a process killed) does not stop the others: the ones that need it are skipped, the
rest finish, and `run_units` then raises one LmscopeError naming every unit that failed or was
skipped. `jobs=1` runs the units one after another in this process, as before (and a Ctrl-C
there stops the study at once, as before), and so does an `inline` unit at any `jobs` (light
work, such as a step's tables across the units before it).

A unit's `run` must be picklable (a module-level function) with picklable arguments; it returns
nothing and writes its results into its own folder. What the parent does once a unit finished
(a `.done` marker, a log line) is the `on_done` callback's.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait

import torch

from lmscope.errors import LmscopeError, TrainingInterrupted


@dataclass(frozen=True)
class Unit:
    """One independent piece of a study's work."""

    name: str  # unique in the study, such as "train runs/math"
    run: Callable  # run(*args): a module-level function, called in the unit's process
    args: tuple = ()
    needs: tuple[str, ...] = ()  # the names of the units that must finish first
    gpus: int = 1  # GPUs it asks for where there are GPUs (0 on a CPU-only machine)
    inline: bool = False  # run in this process, as a plain call (light work across units)


@dataclass
class DevicePool:
    """The GPUs of the machine (their CUDA indices as strings), handed to units so that no two
    running units share one."""

    devices: list[str]
    free: list[str] = field(init=False)

    def __post_init__(self):
        self.free = list(self.devices)

    def take(self, n: int) -> list[str] | None:
        """n free GPUs (the lowest first), or None while fewer are free."""
        if n > len(self.free):
            return None
        taken, self.free = self.free[:n], self.free[n:]
        return taken

    def give_back(self, taken: Sequence[str]) -> None:
        self.free = sorted({*self.free, *taken}, key=self.devices.index)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA indices ("0", "1", ...); [] without CUDA."""
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def threads_per_unit(jobs: int, cores: int | None = None) -> int:
    """The CPU threads each of `jobs` units running at once gets: the cores split evenly."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // jobs)


MAX_AUTO_JOBS = 4  # workers of --jobs auto on a CPU


def check_jobs(jobs) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise LmscopeError(f"--jobs must be a whole number of at least 1, or auto, got "
                           f"{jobs!r}: the number of units of work to run at once")


def auto_jobs(cores: int | None = None, gpus: Sequence[str] | None = None) -> int:
    """--jobs auto: one unit per GPU where there are GPUs; without, one per core up to
    MAX_AUTO_JOBS. The small models of a study use a core better each in a process of its own
    than two threads of one process do (on 2 cores the quick domain study's work is 150 s of
    CPU at 1 thread, 220 s at 2); past 4 workers, each holding its own torch, the memory grows
    faster than the study's few runs can use."""
    gpus = visible_gpus() if gpus is None else gpus
    return len(gpus) if gpus else max(1, min(cores or os.cpu_count() or 1, MAX_AUTO_JOBS))


def resolve_jobs(jobs: int | str) -> int:
    """A --jobs value as a number: N as it is (checked), "auto" as `auto_jobs()`."""
    if jobs == "auto":
        return auto_jobs()
    if isinstance(jobs, str) and jobs.isdigit():
        jobs = int(jobs)
    check_jobs(jobs)
    return jobs


def check_units(units: Sequence[Unit], gpus: Sequence[str]) -> None:
    """Unique names, known needs, no cycle, and no unit asking for more GPUs than there are."""
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"units with the same name: {twice}")
    known = set(names)
    for u in units:
        missing = [n for n in u.needs if n not in known]
        if missing:
            raise ValueError(f"unit {u.name!r} needs unknown units {missing}")
        if gpus and u.gpus > len(gpus):
            raise LmscopeError(f"unit {u.name!r} asks for {u.gpus} GPUs and this machine has "
                               f"{len(gpus)}: lower its GPUs or run it on a larger machine")
    seen: set[str] = set()  # peel off the units whose needs are met; a cycle is what remains
    pending = list(units)
    while pending:
        ready = {u.name for u in pending if set(u.needs) <= seen}
        if not ready:
            raise ValueError(f"units that need each other: {[u.name for u in pending]}")
        seen |= ready
        pending = [u for u in pending if u.name not in seen]


def _outcome_of(run: Callable, args: tuple) -> str | None:
    """Run a unit's work; None, or the text of the error it raised."""
    try:
        run(*args)
        return None
    except BaseException as e:  # reported to the parent, which decides what to do
        message = str(e) if isinstance(e, LmscopeError) else "".join(
            traceback.format_exception_only(type(e), e)).strip()
        return message or type(e).__name__


def _end_with_parent() -> None:
    """End this process as soon as the study's process is gone (killed with SIGKILL, say), so
    that no unit goes on alone and the next run of the study finds its folders free: a thread
    waits for the end of the pipe the parent holds (multiprocessing's parent sentinel)."""
    parent = multiprocessing.parent_process()

    def watch():
        wait([parent.sentinel])
        os._exit(1)  # what the unit wrote so far is resumed or redone by the next run
    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _unit_main(run: Callable, args: tuple, gpus: list[str] | None, threads: int, conn) -> None:
    """A unit's process on a machine with GPUs: its GPUs and threads first (before anything
    touches CUDA), then its work; the outcome goes back through `conn` as None or an error's
    text."""
    _end_with_parent()
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    torch.set_num_threads(threads)
    try:
        conn.send(_outcome_of(run, args))
    finally:
        conn.close()


def _worker_main(threads: int, conn) -> None:
    """A worker process on a machine without GPUs: its threads, then one unit after another as
    the parent sends them (`(run, args)`, None to end), each outcome sent back as it ends. It
    starts once for many units: a fresh process costs seconds of imports (torch, matplotlib),
    more than many units' own work."""
    _end_with_parent()
    torch.set_num_threads(threads)
    try:
        while (task := conn.recv()) is not None:
            conn.send(_outcome_of(*task))
    except (EOFError, OSError, KeyboardInterrupt):
        # the parent closed its end (an end of file, a broken pipe or a reset connection,
        # depending on the moment), or a Ctrl-C reached the whole process group (the study
        # stops there): no traceback of a worker under the study's own lines
        return


def _ray_unit(run: Callable, args: tuple, threads: int) -> str | None:
    """A unit as a Ray task (Ray sets CUDA_VISIBLE_DEVICES to the GPUs it granted)."""
    torch.set_num_threads(threads)
    return _outcome_of(run, args)


EXECUTORS = ("local", "ray")


@dataclass
class _Worker:
    process: multiprocessing.Process
    conn: object  # the parent's end of its two-way pipe
    unit: Unit | None = None  # what it runs now


class _Processes:
    """Units in spawned processes on this machine: on a machine with GPUs, a fresh process per
    unit (CUDA_VISIBLE_DEVICES must be set before CUDA starts); without, up to `jobs` worker
    processes that each run one unit after another (`_worker_main`). A unit whose process dies
    fails with its exit code, and the next unit gets a fresh worker."""

    def __init__(self, threads: int):
        self.threads = threads
        self.context = multiprocessing.get_context("spawn")
        self.running: dict = {}  # sentinel -> (unit, process, connection): GPU units
        self.workers: list[_Worker] = []

    def start(self, u: Unit, gpus: list[str] | None) -> None:
        if gpus is None:
            worker = next((w for w in self.workers if w.unit is None), None) or self._spawn()
            worker.unit = u
            worker.conn.send((u.run, u.args))
            return
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_unit_main, name=u.name,
                                       args=(u.run, u.args, gpus, self.threads, send))
        process.start()
        send.close()
        self.running[process.sentinel] = (u, process, receive)

    def _spawn(self) -> _Worker:
        ours, theirs = self.context.Pipe(duplex=True)
        process = self.context.Process(target=_worker_main, name="lmscope-worker",
                                       args=(self.threads, theirs))
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        self.workers.append(worker)
        return worker

    def finished(self, timeout: float | None = None) -> list[tuple[Unit, str | None]]:
        """Waits until at least one unit ended (or `timeout` s passed); (unit, outcome) of each
        that did."""
        busy = [w for w in self.workers if w.unit is not None]
        ready = set(wait([*self.running, *(w.conn for w in busy),
                          *(w.process.sentinel for w in busy)], timeout))
        out = []
        for sentinel in [s for s in self.running if s in ready]:
            u, process, receive = self.running.pop(sentinel)
            outcome = receive.recv() if receive.poll() else (
                f"its process ended with exit code {process.exitcode}")
            process.join()
            receive.close()
            out.append((u, outcome))
        for w in busy:
            if w.conn not in ready and w.process.sentinel not in ready:
                continue
            try:
                outcome = w.conn.recv()
            except (EOFError, OSError):  # it died with the unit: a fresh one takes the next
                w.process.join()
                outcome = f"its process ended with exit code {w.process.exitcode}"
                self.workers.remove(w)
                w.conn.close()
            out.append((w.unit, outcome))
            w.unit = None
        return out

    def close(self) -> None:
        """End the idle workers (a busy one at an error ends with this process)."""
        for w in self.workers:
            if w.unit is None:
                with contextlib.suppress(OSError):  # it ended meanwhile
                    w.conn.send(None)
        for w in self.workers:
            if w.unit is None:
                w.process.join()
            w.conn.close()
        self.workers = []


def check_executor(executor) -> None:
    if executor not in EXECUTORS:
        raise LmscopeError(f"unknown executor {executor!r}: choose from {', '.join(EXECUTORS)}")


def connect(executor: str, address: str | None = None):
    """Check the executor before any work: for "ray", Ray installed and its cluster reached
    (`ray.init(address)`: None starts a local instance, "auto" joins the running one); returns
    the ray module (None for "local")."""
    check_executor(executor)
    if executor == "local":
        if address is not None:
            raise LmscopeError("--address is the Ray cluster's: give it with --executor ray")
        return None
    try:
        import ray  # optional (a second or more to import): pip install 'lmscope[ray]'
    except ImportError:
        raise LmscopeError("--executor ray needs Ray, which is not installed: pip install "
                           "'lmscope[ray]' (or run the study with --jobs N on this "
                           "machine)") from None
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"at {address}" if address else "to start or join"
            raise LmscopeError(f"no Ray cluster {where}: {str(e).splitlines()[0]} (start "
                               "one with `ray start --head`, or give --address)") from None
    return ray


def _check_reachable(address: str | None, seconds: float = 10.0) -> None:
    """A HOST:PORT address that answers (Ray itself would retry for minutes before saying it
    does not); "auto", "ray://..." and None are left to Ray."""
    if address is None or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except (OSError, ValueError) as e:
        reason = "not a port" if isinstance(e, ValueError) else (e.strerror or str(e) or
                                                                   type(e).__name__)
        raise LmscopeError(f"no Ray cluster at {address}: {reason} (start one with `ray start "
                           "--head` and give its HEAD_IP:6379, or --address auto on a node of "
                           "it)") from None


class _RayTasks:
    """Units as tasks of a Ray cluster (`connect`), each asking for its CPUs and, where the
    cluster has GPUs, its GPUs."""

    def __init__(self, threads: int, address: str | None):
        ray = self.ray = connect("ray", address)
        self.threads = threads
        self.has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        self.task = ray.remote(_ray_unit)
        self.running: dict = {}  # object ref -> unit

    def start(self, u: Unit, gpus) -> None:
        ref = self.task.options(num_cpus=self.threads, num_gpus=u.gpus if self.has_gpus else 0,
                                name=u.name).remote(u.run, u.args, self.threads)
        self.running[ref] = u

    def finished(self, timeout: float | None = None) -> list[tuple[Unit, str | None]]:
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            u = self.running.pop(ref)
            try:
                out.append((u, self.ray.get(ref)))
            except Exception as e:  # the task's worker died
                out.append((u, f"its Ray task failed: {str(e).splitlines()[0]}"))
        return out

    def close(self) -> None:
        pass  # Ray's workers are Ray's


def run_units(units: Sequence[Unit], *, jobs: int = 1, gpus: Sequence[str] | None = None,
              cores: int | None = None, executor: str = "local", address: str | None = None,
              on_start: Callable[[Unit, list[str] | None], None] = None,
              on_done: Callable[[Unit], None] | None = None,
              on_wait: Callable[[], None] | None = None) -> list[str]:
    """Run `units` respecting their needs, up to `jobs` at once (module docstring). `gpus`: the
    GPUs to share out (default: the visible ones; Ray shares out its own). `executor` "ray"
    sends the units to a Ray cluster (`address`, default: a new local instance). `on_wait` is
    called about once a second while units run elsewhere (to redraw their progress). Returns the
    names in the order they finished; raises LmscopeError naming the failed and skipped units
    after the others finished."""
    check_jobs(jobs)
    check_executor(executor)
    threads = threads_per_unit(jobs, cores)
    if executor == "ray":
        gpus = []  # Ray grants GPUs itself
        backend = _RayTasks(threads, address) if units else None
    else:
        gpus = list(visible_gpus() if gpus is None else gpus)
        backend = _Processes(threads) if jobs > 1 else None
    check_units(units, gpus)
    pool = DevicePool(gpus)
    done: list[str] = []
    failed: dict[str, str] = {}
    pending = list(units)
    running: dict[str, list[str] | None] = {}  # unit name -> its GPUs

    def blocked(u: Unit) -> bool:
        return any(n in failed for n in u.needs)

    def ended(u: Unit, outcome: str | None) -> None:
        taken = running.pop(u.name)
        if taken:
            pool.give_back(taken)
        if outcome is None:
            done.append(u.name)
            if on_done is not None:
                on_done(u)
        else:
            failed[u.name] = outcome

    def start_ready() -> bool:
        """Start what may start now, in the units' order, but the workers' units before an
        inline one: while this process runs that, no worker gets a next unit. Returns whether
        an inline unit ran (what it finished may let an earlier unit start)."""
        ready = [u for u in pending if set(u.needs) <= set(done)]
        if backend is not None:
            ready.sort(key=lambda u: u.inline)  # stable: the units' order within each kind
        for u in ready:
            here = backend is None or u.inline  # in this process, as a plain call
            if not here and len(running) >= jobs:
                continue  # an inline unit takes no place of the `jobs`
            taken = pool.take(u.gpus) if gpus and not here else None
            if gpus and not here and taken is None:
                continue  # its GPUs are busy: a smaller unit may still start
            pending.remove(u)
            running[u.name] = taken
            if on_start is not None:
                on_start(u, taken)
            if here:
                try:
                    u.run(*u.args)
                except TrainingInterrupted:
                    raise  # Ctrl-C: the study stops here, as it always has
                except LmscopeError as e:
                    ended(u, str(e))
                else:
                    ended(u, None)
                return True  # what it finished may let an earlier unit start
            backend.start(u, taken)
        return False

    try:
        while pending or running:
            while any(blocked(u) for u in pending):  # what needs a failed unit cannot run
                for u in [u for u in pending if blocked(u)]:
                    failed[u.name] = "skipped: it needs " + ", ".join(n for n in u.needs
                                                                      if n in failed)
                    pending.remove(u)
            while start_ready():
                pass
            if running:
                for u, outcome in backend.finished(None if on_wait is None else 1.0):
                    ended(u, outcome)
                if on_wait is not None and running:
                    on_wait()
    finally:
        if backend is not None:
            backend.close()
    if failed:
        broken = {n: why for n, why in failed.items() if not why.startswith("skipped")}
        skipped = [n for n in failed if n not in broken]
        raise LmscopeError(
            f"{len(failed)} of {len(units)} units did not finish (the others did): "
            + "; ".join(f"{name}: {why}" for name, why in broken.items())
            + ("; skipped (they need what failed): " + ", ".join(skipped) if skipped else ""))
    return done
