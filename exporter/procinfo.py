"""Finding an engine's process in /proc and reading its start time.

Works when the exporter sees the engine's process: same host (systemd), or a
Kubernetes pod with `shareProcessNamespace: true`. All reads are small and
bounded; a vanished or unreadable process is simply "not found". Every function
takes plain values and a `proc_root` (default /proc), so it runs on a fixture
tree (tests/fixtures/proc) as client_python's and node_exporter's do.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from .clock import now as steady_now

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGESIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    start_time: float  # Unix seconds, sub-second precise (see boot_relative_to_unix)
    start_since_boot: float  # seconds since boot, as the kernel reports it


def _read(path: str, limit: int = 65536) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except OSError:
        return None


def boot_relative_to_unix(seconds_since_boot: float, clock: int = time.CLOCK_BOOTTIME) -> float:
    """Convert a kernel time since boot to Unix time on the exporter's stepless clock (clock.py), using the
    current clocks (no 1 s btime rounding)."""
    return steady_now() - (time.clock_gettime(clock) - seconds_since_boot)


def process_start(pid: int, proc_root: str = "/proc") -> ProcessInfo | None:
    fields = _stat_fields(pid, proc_root)
    try:
        ticks = int(fields[19]) if fields else None  # field 22 of stat: starttime
    except (ValueError, IndexError):
        return None
    if ticks is None:
        return None
    since_boot = ticks / _CLK_TCK
    return ProcessInfo(pid, boot_relative_to_unix(since_boot), since_boot)


def _stat_fields(pid: int | str, proc_root: str = "/proc") -> list[bytes] | None:
    """/proc/PID/stat's fields after the command name (which may hold spaces and parentheses)."""
    stat = _read(f"{proc_root}/{pid}/stat", 4096)
    if not stat:
        return None
    try:
        return stat[stat.rindex(b")") + 2 :].split()
    except ValueError:
        return None


def parent_pid(pid: int, proc_root: str = "/proc") -> int | None:
    fields = _stat_fields(pid, proc_root)
    try:
        return int(fields[1]) if fields else None
    except (ValueError, IndexError):
        return None


def _matches(pid: int, name: str | None, pattern: re.Pattern[str] | None, proc_root: str) -> bool:
    if name is not None:
        comm = _read(f"{proc_root}/{pid}/comm", 256)
        if comm is None or comm.decode("utf-8", "replace").strip() != name:
            return False
    if pattern is not None:
        cmdline = _read(f"{proc_root}/{pid}/cmdline")
        if cmdline is None or not pattern.search(cmdline.replace(b"\0", b" ").decode("utf-8", "replace")):
            return False
    return True


class ProcessFinder:
    """Resolves a process named by a PID file, a program name (comm) and/or a command-line regex to a PID,
    re-resolving when the process goes away (a target's `process:`). While nothing matches, /proc is
    scanned again at most every `rescan_s` seconds (a scan reads every process's comm and command line; a
    PID file is cheap and read every time). The start time it reports is the process's own, so finding a
    process a few seconds late dates nothing wrong."""

    def __init__(
        self,
        pid_file: str | None = None,
        name: str | None = None,
        cmdline: str | None = None,
        proc_root: str = "/proc",
        rescan_s: float = 5.0,
        now: Callable[[], float] = time.monotonic,
    ):
        self.pid_file = pid_file
        self.name = name
        self.proc_root = proc_root
        self.pattern = re.compile(cmdline) if cmdline else None
        self.pid: int | None = None
        self.rescan_s = rescan_s
        self.now = now
        self.scans = 0
        self._missed_at: float | None = None  # when the last scan found nothing

    def find(self) -> ProcessInfo | None:
        if self.pid is not None:
            info = process_start(self.pid, self.proc_root)
            if info is not None and self._still_matches(self.pid):
                return info
            self.pid = None
            self._missed_at = None  # it went away: look for its successor at once
        if not self.pid_file and self._missed_at is not None and self.now() - self._missed_at < self.rescan_s:
            return None
        pid = self._resolve()
        self._missed_at = self.now() if pid is None else None
        if pid is None:
            return None
        self.pid = pid
        return process_start(pid, self.proc_root)

    def rescan(self) -> None:
        """A new engine process is known to exist (its identity changed): look at the next find()."""
        self._missed_at = None

    def _still_matches(self, pid: int) -> bool:
        if self.pid_file:
            return self._pid_from_file() == pid
        return _matches(pid, self.name, self.pattern, self.proc_root)

    def _pid_from_file(self) -> int | None:
        raw = _read(self.pid_file or "", 64)
        if raw is None:
            return None
        try:
            pid = int(raw.strip())
        except ValueError:
            return None
        return pid if pid > 0 else None

    def _resolve(self) -> int | None:
        if self.pid_file:
            pid = self._pid_from_file()
            return pid if pid is not None and os.path.exists(f"{self.proc_root}/{pid}") else None
        own = os.getpid()
        candidates = []
        self.scans += 1
        try:
            entries = os.listdir(self.proc_root)
        except OSError:
            return None
        for entry in entries:
            if not entry.isdigit() or int(entry) == own:
                continue
            pid = int(entry)
            if _matches(pid, self.name, self.pattern, self.proc_root):
                info = process_start(pid, self.proc_root)
                if info is not None:
                    candidates.append((info.start_since_boot, pid))
        # Several matches (a launcher and its child): the oldest is the engine's start.
        return min(candidates)[1] if candidates else None


def find_by_argv(argv: tuple[str, ...], proc_root: str = "/proc") -> ProcessInfo | None:
    """The newest process whose command line is exactly `argv` (a llama.cpp router's child: the
    router lists each child's argv in /models). One pass over /proc, done only when a child is new."""
    wanted = ("\0".join(argv) + "\0").encode("utf-8", "replace")
    own = os.getpid()
    found: ProcessInfo | None = None
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit() or int(entry) == own:
            continue
        cmdline = _read(f"{proc_root}/{entry}/cmdline", len(wanted) + 1)
        if cmdline != wanted:
            continue
        info = process_start(int(entry), proc_root)
        if info is not None and (found is None or info.start_since_boot > found.start_since_boot):
            found = info
    return found


def processes_where(accept: Callable[[tuple[str, ...]], bool], proc_root: str = "/proc") -> list[ProcessInfo]:
    """Processes (other than this one) whose command line `accept` takes, oldest first. One pass over
    /proc; callers do it only when something changed (a model appeared)."""
    own = os.getpid()
    found = []
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == own:
            continue
        raw = _read(f"{proc_root}/{entry}/cmdline", 4096)
        if not raw:
            continue
        argv = tuple(part.decode("utf-8", "replace") for part in raw.rstrip(b"\0").split(b"\0"))
        if accept(argv):
            info = process_start(int(entry), proc_root)
            if info is not None:
                found.append(info)
    return sorted(found, key=lambda p: p.start_since_boot)


def still_running(info: ProcessInfo, proc_root: str = "/proc") -> bool:
    """The process `info` describes is alive and is the same one (a recycled PID has another start time)."""
    current = process_start(info.pid, proc_root)
    return current is not None and abs(current.start_since_boot - info.start_since_boot) < 0.02


def command_line(pid: int, proc_root: str = "/proc") -> tuple[str, ...] | None:
    """A process's argv (every user can read it), or None when it is gone."""
    raw = _read(f"{proc_root}/{pid}/cmdline", 65536)
    if not raw:
        return None
    return tuple(part.decode("utf-8", "replace") for part in raw.rstrip(b"\0").split(b"\0"))


def environment(pid: int, proc_root: str = "/proc") -> dict[str, str] | None:
    """A process's environment, or None when this user may not read it (another user's process)."""
    raw = _read(f"{proc_root}/{pid}/environ", 262144)
    if raw is None:
        return None
    out = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            out[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return out


def find_by_port(
    port: int, is_engine: Callable[[tuple[str, ...]], bool], default_port: int | None = None, proc_root: str = "/proc"
) -> ProcessInfo | None:
    """The oldest engine process (`is_engine` accepts its command line) that says it listens on `port` (`--port P`,
    `--port=P`, or no --port at all when `port` is the program's default): how an engine beside the exporter
    is found without `process:` and without privileges (every user can read every command line)."""

    def listens(argv: tuple[str, ...]) -> bool:
        if not argv or not is_engine(argv):
            return False
        for i, arg in enumerate(argv):
            if arg == "--port" and i + 1 < len(argv):
                return argv[i + 1] == str(port)
            if arg.startswith("--port="):
                return arg[7:] == str(port)
        return port == default_port

    found = processes_where(listens, proc_root)
    return found[0] if found else None


def own_process(
    pid: int | str = "self", proc_root: str = "/proc"
) -> tuple[float, float, float, float, float, float] | None:
    """This process (or `pid`): virtual and resident memory (bytes), start time (Unix seconds), CPU
    seconds, open and maximum file descriptors, read as prometheus_client's ProcessCollector reads them."""
    import resource

    fields = _stat_fields(pid, proc_root)
    stat = _read(f"{proc_root}/stat", 65536)
    if fields is None or stat is None:
        return None
    try:
        btime = next(float(line.split()[1]) for line in stat.splitlines() if line.startswith(b"btime "))
        fds = float(len(os.listdir(f"{proc_root}/{pid}/fd")))
        return (
            float(fields[20]),
            float(fields[21]) * _PAGESIZE,
            float(fields[19]) / _CLK_TCK + btime,
            (float(fields[11]) + float(fields[12])) / _CLK_TCK,
            fds,
            float(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        )
    except (StopIteration, ValueError, IndexError, OSError):
        return None


def release_free_memory() -> None:
    """Hand memory that malloc keeps after start-up (or after NVML's initialisation) back to the OS
    (glibc's malloc_trim; nothing elsewhere). Resident memory is what a sidecar's limit counts."""
    import ctypes

    try:
        process = ctypes.CDLL(None)  # this program and the libraries it loaded: libc among them
    except OSError:
        return
    trim = getattr(process, "malloc_trim", None)
    if trim is not None:
        trim(0)


# Kubernetes identity from /proc/<pid>/cgroup (v1: one line per hierarchy; v2: "0::<path>"). The pod UID
# is the kubelet's `pod<uid>` segment (dashes, or underscores under the systemd cgroup driver); the
# container id is the last segment's 64 hex digits, bare (cgroupfs driver) or in a systemd scope named by
# the runtime: cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope. CRI-O's conmon scope is not
# the container. Shapes: tests/fixtures/cgroup/SOURCES.md.
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?(?:/|$)"
)
_CONTAINER_ID = re.compile(r"(?:^|/)(?:(?:cri-containerd|crio|docker|containerd)-)?([0-9a-f]{64})(?:\.scope)?$")


def parse_cgroup(text: str) -> tuple[str, str] | None:
    """(pod UID, container id) from a /proc/<pid>/cgroup text; either may be "" (a Docker container has no
    pod); None when the process is in no container."""
    best: tuple[str, str] | None = None
    for line in text.splitlines()[:64]:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2].strip()
        pod = _POD_UID.search(path)
        container = _CONTAINER_ID.search(path)
        if not pod and not container:
            continue
        found = (pod.group(1).replace("_", "-") if pod else "", container.group(1) if container else "")
        if best is None or sum(map(bool, found)) > sum(map(bool, best)):
            best = found
    return best


def container_identity(pid: int, proc_root: str = "/proc") -> tuple[str, str] | None:
    raw = _read(f"{proc_root}/{pid}/cgroup", 16384)
    return None if raw is None else parse_cgroup(raw.decode("utf-8", "replace"))
