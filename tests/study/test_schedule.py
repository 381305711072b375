"""The study's unit scheduler: needs respected, units side by side, GPUs never shared, the CPU's
cores split, failures reported after the others finish. Units run in spawned processes, so the
functions they run are module-level ones of this file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmscope.errors import LmscopeError
from lmscope.study.schedule import (
    DevicePool,
    Unit,
    auto_jobs,
    check_units,
    resolve_jobs,
    run_units,
    threads_per_unit,
)
from tests.conftest import HANG_TIMEOUT

EIGHT = [str(i) for i in range(8)]


def mark(folder: str, name: str, needs: tuple = ()) -> None:
    """A unit: fails unless its needs' markers exist, then leaves its own."""
    for n in needs:
        if not (Path(folder) / n).is_file():
            raise LmscopeError(f"{name} started before {n} finished")
    (Path(folder) / name).write_text(json.dumps({
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": torch.get_num_threads()}))


def meet(folder: str, name: str, other: str) -> None:
    """A unit that finishes only once `other` has started: two of them finish only when they
    run at the same time (waits for a state, bounded against a hang)."""
    (Path(folder) / f"{name}.started").write_text("")
    deadline = time.monotonic() + HANG_TIMEOUT
    while not (Path(folder) / f"{other}.started").is_file():
        if time.monotonic() > deadline:
            raise LmscopeError(f"{other} never ran beside {name}")
        time.sleep(0.01)
    mark(folder, name)


def wait_forever(folder: str, name: str) -> None:
    """A unit that leaves its process id and then waits for a marker nobody writes."""
    (Path(folder) / f"{name}.pid").write_text(str(os.getpid()))
    while not (Path(folder) / "never").exists():
        time.sleep(0.05)


def fail(name: str) -> None:
    raise LmscopeError(f"{name} broke")


def record_pid(folder: str, name: str) -> None:
    (Path(folder) / f"{name}.pid").write_text(str(os.getpid()))


def die(code: int) -> None:
    os._exit(code)  # as a unit killed from outside would end, without a word


def test_a_pool_of_eight_gpus_never_hands_one_out_twice():
    pool = DevicePool(EIGHT)
    held = [pool.take(2), pool.take(1), pool.take(2), pool.take(3)]
    assert held == [["0", "1"], ["2"], ["3", "4"], ["5", "6", "7"]]
    assert pool.take(1) is None  # all eight are out
    pool.give_back(held[1])
    pool.give_back(held[0])
    assert pool.take(2) == ["0", "1"] and pool.take(1) == ["2"] and pool.take(1) is None


def test_simulated_eight_gpus_units_get_their_own(tmp_path):
    """Six units on a fake 8-GPU machine, two of them asking for 2 GPUs: each gets as many as
    it asked for, in its own CUDA_VISIBLE_DEVICES, and no two running units share one."""
    units = [Unit(f"u{i}", mark, (str(tmp_path), f"u{i}"), gpus=2 if i in (1, 4) else 1)
             for i in range(6)]
    held: dict[str, list[str]] = {}
    seen = []

    def started(unit, taken):
        in_use = {g for gs in held.values() for g in gs}
        assert not in_use & set(taken), (unit.name, taken, held)
        held[unit.name] = taken
        seen.append((unit.name, taken))

    done = run_units(units, jobs=4, gpus=EIGHT, on_start=started,
                     on_done=lambda unit: held.pop(unit.name))
    assert sorted(done) == [f"u{i}" for i in range(6)]
    for name, taken in seen:
        recorded = json.loads((tmp_path / name).read_text())
        assert recorded["gpus"] == ",".join(taken)
        assert len(taken) == (2 if name in ("u1", "u4") else 1)


def test_needs_come_first_and_independent_units_run_side_by_side(tmp_path):
    folder = str(tmp_path)
    units = [Unit("a", meet, (folder, "a", "b"), gpus=0),
             Unit("b", meet, (folder, "b", "a"), gpus=0),
             Unit("c", mark, (folder, "c", ("a", "b")), needs=("a", "b"), gpus=0)]
    done = run_units(units, jobs=2, gpus=[], cores=4)
    assert set(done[:2]) == {"a", "b"} and done[2] == "c"
    assert json.loads((tmp_path / "a").read_text())["threads"] == 2  # 4 cores, 2 at a time


def test_one_at_a_time_runs_in_this_process_in_order(tmp_path):
    folder = str(tmp_path)
    units = [Unit("b", mark, (folder, "b", ("a",)), needs=("a",), gpus=0),
             Unit("a", mark, (folder, "a"), gpus=0)]
    assert run_units(units, jobs=1, gpus=[]) == ["a", "b"]
    assert json.loads((tmp_path / "a").read_text())["threads"] == torch.get_num_threads()


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_unit_stops_only_what_needs_it(tmp_path, jobs):
    folder = str(tmp_path)
    units = [Unit("bad", fail, ("bad",), gpus=0),
             Unit("after-bad", mark, (folder, "after-bad"), needs=("bad",), gpus=0),
             Unit("fine", mark, (folder, "fine"), gpus=0)]
    finished = []
    with pytest.raises(LmscopeError, match=r"2 of 3 units did not finish \(the others did\): "
                                           r"bad: bad broke; skipped \(they need what failed\): after-bad"):
        run_units(units, jobs=jobs, gpus=[], on_done=lambda u: finished.append(u.name))
    assert finished == ["fine"] and (tmp_path / "fine").is_file()
    assert not (tmp_path / "after-bad").exists()


def test_without_gpus_workers_run_unit_after_unit(tmp_path):
    """On a CPU machine `jobs` worker processes take the units in turn (a process started per
    unit would cost seconds of imports each); none runs in the study's own process."""
    folder = str(tmp_path)
    units = [Unit(f"u{i}", record_pid, (folder, f"u{i}"), gpus=0) for i in range(6)]
    assert sorted(run_units(units, jobs=2, gpus=[])) == sorted(u.name for u in units)
    pids = {(tmp_path / f"u{i}.pid").read_text() for i in range(6)}
    assert 1 <= len(pids) <= 2 and str(os.getpid()) not in pids


def test_a_unit_whose_worker_dies_fails_and_the_next_gets_a_fresh_one(tmp_path):
    folder = str(tmp_path)
    units = [Unit("dies", die, (3,), gpus=0),
             Unit("after", record_pid, (folder, "after"), needs=("dies",), gpus=0),
             Unit("then", record_pid, (folder, "then"), needs=("fine",), gpus=0),
             Unit("fine", record_pid, (folder, "fine"), gpus=0)]
    with pytest.raises(LmscopeError, match=r"2 of 4 units did not finish \(the others did\): dies: "
                                           r"its process ended with exit code 3; skipped"):
        run_units(units, jobs=2, gpus=[])
    assert (tmp_path / "then").with_suffix(".pid").is_file()
    assert not (tmp_path / "after.pid").exists()


def test_jobs_auto_is_one_per_gpu_else_one_per_core_up_to_four():
    assert auto_jobs(cores=2, gpus=[]) == 2 and auto_jobs(cores=1, gpus=[]) == 1
    assert auto_jobs(cores=16, gpus=[]) == 4
    assert auto_jobs(cores=16, gpus=["0", "1", "2"]) == 3
    assert resolve_jobs("auto") == auto_jobs() and resolve_jobs("3") == resolve_jobs(3) == 3
    for bad in ("0", "many", 0, 1.5):
        with pytest.raises(LmscopeError, match="--jobs must be a whole number of at least 1, "
                                               "or auto"):
            resolve_jobs(bad)


def test_bad_units_and_jobs():
    with pytest.raises(LmscopeError, match="--jobs must be a whole number of at least 1, or auto, got 0"):
        run_units([], jobs=0)
    with pytest.raises(LmscopeError, match="asks for 9 GPUs and this machine has 8"):
        check_units([Unit("big", fail, gpus=9)], EIGHT)
    with pytest.raises(ValueError, match="units that need each other"):
        check_units([Unit("a", fail, needs=("b",)), Unit("b", fail, needs=("a",))], [])
    with pytest.raises(ValueError, match="needs unknown units"):
        check_units([Unit("a", fail, needs=("z",))], [])
    assert threads_per_unit(2, cores=2) == 1 and threads_per_unit(3, cores=2) == 1
    assert threads_per_unit(1, cores=16) == 16


# --- on a Ray cluster (a local instance with 2 CPUs) ---------------------------------------------

@pytest.mark.xdist_group("ray")  # one Ray instance at a time, and none yet for this test
def test_ray_missing_or_no_cluster_is_a_one_line_error(monkeypatch):
    unit = [Unit("a", fail, ("a",), gpus=0)]
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(LmscopeError, match=r"--executor ray needs Ray, which is not installed: "
                                           r"pip install 'lmscope\[ray\]'"):
        run_units(unit, executor="ray")
    monkeypatch.undo()  # the real module back (or none, where Ray is not installed)
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(LmscopeError, match="no Ray cluster at auto: Could not find any running"):
        run_units(unit, executor="ray", address="auto")
    with pytest.raises(LmscopeError, match="unknown executor 'slurm'"):
        run_units(unit, executor="slurm")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.xdist_group("ray")
def test_units_as_ray_tasks_side_by_side_with_their_needs_and_failures(local_ray, tmp_path):
    folder = str(tmp_path)
    units = [Unit("a", meet, (folder, "a", "b"), gpus=0),
             Unit("b", meet, (folder, "b", "a"), gpus=0),
             Unit("c", mark, (folder, "c", ("a", "b")), needs=("a", "b"), gpus=0),
             Unit("bad", fail, ("bad",), gpus=0),
             Unit("after-bad", mark, (folder, "after-bad"), needs=("bad",), gpus=0)]
    finished = []
    with pytest.raises(LmscopeError, match=r"2 of 5 units did not finish \(the others did\): "):
        run_units(units, jobs=2, cores=2, executor="ray", on_done=lambda u: finished.append(u.name))
    assert set(finished[:2]) == {"a", "b"} and finished[2] == "c"
    assert json.loads((tmp_path / "c").read_text())["threads"] == 1  # 2 CPUs, 2 at a time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.is_file() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_units_end_with_the_study_when_it_is_killed(tmp_path):
    """A study process killed with SIGKILL takes its running units with it (without this they
    would wait forever here), so the same command can take the study up again."""
    script = ("import sys; from lmscope.study.schedule import Unit, run_units; "
              "from tests.study.test_schedule import wait_forever; "
              "run_units([Unit(n, wait_forever, (sys.argv[1], n)) for n in 'ab'], jobs=2, gpus=[])")
    study = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                             cwd=Path(__file__).parents[2])
    pids = [tmp_path / f"{n}.pid" for n in "ab"]
    deadline = time.monotonic() + HANG_TIMEOUT
    while not all(p.is_file() and p.read_text() for p in pids):
        assert study.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    workers = [int(p.read_text()) for p in pids]
    assert all(_alive(pid) for pid in workers)
    study.kill()
    study.wait(timeout=HANG_TIMEOUT)
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a unit outlived the study that started it"
        time.sleep(0.05)


def test_a_ctrl_c_stops_the_workers_without_a_traceback(tmp_path):
    """A Ctrl-C reaches the study and its workers (one process group): the study stops, and
    neither the busy worker nor the idle one writes a traceback under its lines or lives on."""
    from tests.terminal import Terminal

    script = (
        "import sys\n"
        "from lmscope.study.schedule import Unit, run_units\n"
        "from tests.study.test_schedule import record_pid, wait_forever\n"
        f"folder = {str(tmp_path)!r}\n"
        "units = [Unit('forever', wait_forever, (folder, 'forever'), gpus=0),\n"
        "         Unit('quick', record_pid, (folder, 'quick'), gpus=0)]\n"
        "try:\n"
        "    run_units(units, jobs=2, gpus=[])\n"
        "except KeyboardInterrupt:\n"
        "    print('stopped by the user', file=sys.stderr)\n")
    term = Terminal([sys.executable, "-c", script], cwd=Path(__file__).parents[2],
                    start_new_session=True)
    deadline = time.monotonic() + HANG_TIMEOUT
    while not ((tmp_path / "forever.pid").is_file() and (tmp_path / "quick.pid").is_file()):
        assert time.monotonic() < deadline and term.proc.poll() is None, term.screen
        time.sleep(0.05)
    os.killpg(term.proc.pid, signal.SIGINT)  # what a Ctrl-C at the terminal does
    code, _, screen = term.finish()
    assert code == 0 and "stopped by the user" in screen
    assert "Traceback" not in screen, screen
    for name in ("forever", "quick"):
        pid = int((tmp_path / f"{name}.pid").read_text())
        while _alive(pid):
            assert time.monotonic() < deadline, f"the {name} worker lives on"
            time.sleep(0.05)
