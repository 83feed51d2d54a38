"""procinfo on a checked-in /proc tree (tests/fixtures/proc): every function takes its root."""

import os
import pathlib

import pytest

from exporter import procinfo
from exporter.procinfo import (
    ProcessFinder,
    command_line,
    container_identity,
    environment,
    find_by_argv,
    find_by_port,
    own_process,
    parent_pid,
    process_start,
    processes_where,
    still_running,
)

ROOT = str(pathlib.Path(__file__).parents[1] / "fixtures" / "proc")
TICK = procinfo._CLK_TCK


def is_llama(argv):
    return os.path.basename(argv[0]) == "llama-server"


def test_start_time_and_parent_come_from_stat_even_with_parentheses_in_the_name():
    assert process_start(4100, ROOT).start_since_boot == pytest.approx(150000 / TICK)
    assert process_start(4200, ROOT).start_since_boot == pytest.approx(160000 / TICK)  # comm "llama (child)"
    assert parent_pid(4200, ROOT) == 4100 and parent_pid(4100, ROOT) == 1
    assert process_start(9999, ROOT) is None and parent_pid(9999, ROOT) is None


def test_finder_by_name_takes_the_oldest_match_and_by_cmdline_the_one_named():
    assert ProcessFinder(name="llama-server", proc_root=ROOT).find().pid == 4100  # 4100 and 4300: oldest
    assert ProcessFinder(cmdline=r"--port=8081", proc_root=ROOT).find().pid == 4300
    assert ProcessFinder(name="llama-server", cmdline="other.gguf", proc_root=ROOT).find().pid == 4300
    assert ProcessFinder(name="sglang", proc_root=ROOT).find() is None


def test_finder_scans_proc_again_only_every_few_seconds_while_nothing_matches(tmp_path):
    """A scan reads every process: while the engine is not there, one scan per `rescan_s`, not per poll;
    once it appears it is found at the next scan, with its own start time."""
    import shutil

    tree = tmp_path / "proc"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns("4300", "SOURCES.md"))
    clock = [100.0]
    finder = ProcessFinder(cmdline=r"--port=8081", proc_root=str(tree), rescan_s=5.0, now=lambda: clock[0])
    for _ in range(10):  # ten polls within a second: one scan
        assert finder.find() is None
        clock[0] += 0.1
    assert finder.scans == 1
    shutil.copytree(pathlib.Path(ROOT) / "4300", tree / "4300")  # the engine starts
    assert finder.find() is None and finder.scans == 1  # not looked for yet
    clock[0] += 5.0
    found = finder.find()
    assert found is not None and found.pid == 4300 and finder.scans == 2
    assert found.start_since_boot == process_start(4300, ROOT).start_since_boot  # its own start, not when seen
    assert finder.find().pid == 4300 and finder.scans == 2  # followed without scanning


def test_finder_by_pid_file_follows_the_file(tmp_path):
    pid_file = tmp_path / "engine.pid"
    pid_file.write_text("4300\n")
    finder = ProcessFinder(pid_file=str(pid_file), proc_root=ROOT)
    assert finder.find().pid == 4300
    pid_file.write_text("4400\n")  # the engine restarted under another PID
    assert finder.find().pid == 4400
    pid_file.write_text("9999\n")  # a PID that no longer exists
    assert finder.find() is None
    pid_file.write_text("garbage")
    assert finder.find() is None


def test_find_by_port_reads_both_port_spellings_and_the_default():
    assert find_by_port(8080, is_llama, proc_root=ROOT).pid == 4100
    assert find_by_port(8081, is_llama, proc_root=ROOT).pid == 4300  # --port=8081
    assert find_by_port(8090, is_llama, proc_root=ROOT).pid == 4200
    assert find_by_port(9000, is_llama, proc_root=ROOT) is None
    vllm = find_by_port(8000, lambda argv: argv[0] == "vllm", default_port=8000, proc_root=ROOT)
    assert vllm.pid == 4400  # no --port on its command line: the program's default


def test_argv_lookups():
    assert find_by_argv(("llama-server", "--port", "8090", "--alias", "child"), ROOT).pid == 4200
    assert find_by_argv(("llama-server", "--port", "8090"), ROOT) is None  # exact argv only
    assert [p.pid for p in processes_where(is_llama, ROOT)] == [4100, 4200, 4300]  # oldest first
    assert command_line(4400, ROOT) == ("vllm", "serve", "tiny-llama")
    assert command_line(9999, ROOT) is None


def test_environment_is_none_where_it_cannot_be_read():
    assert environment(4100, ROOT) == {"HOME": "/home/llm", "CUDA_VISIBLE_DEVICES": "0"}
    assert environment(4300, ROOT) is None


def test_container_identity_from_the_cgroup_file():
    assert container_identity(4100, ROOT) == ("12345678-1234-1234-1234-123456789abc", "a" * 64)
    assert container_identity(4300, ROOT) is None  # a systemd service: no container
    assert container_identity(4400, ROOT) is None  # empty file


def test_still_running_compares_start_times():
    info = process_start(4100, ROOT)
    assert still_running(info, ROOT)
    recycled = procinfo.ProcessInfo(4100, info.start_time, info.start_since_boot - 1)
    assert not still_running(recycled, ROOT)


def test_own_process_reads_stat_btime_and_fds():
    vsize, rss, start, cpu, fds, max_fds = own_process(4100, ROOT)
    assert vsize == 2147483648
    assert rss == 51200 * procinfo._PAGESIZE
    assert start == pytest.approx(150000 / TICK + 1764900000)
    assert cpu == pytest.approx((250 + 50) / TICK)
    assert fds == 3 and max_fds > 0
    assert own_process(9999, ROOT) is None
