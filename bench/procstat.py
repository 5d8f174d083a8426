"""CPU time of named groups of processes, read from ``/proc`` (Linux only).

A benchmark names its roles (the API, each worker pool, PostgreSQL, ...) as
sets of pids that are looked up again at each snapshot, and measures the CPU
seconds each role used around a timed part::

    meter = CpuMeter([ProcessRole("api", lambda: descendants(api_pid))])
    with meter.measure() as reading:
        run_the_load()
    print(reading.seconds["api"])

A role's CPU is utime + stime of each of its processes (all threads, exited
threads included), plus cutime + cstime of those of its processes that have
children in the role: the CPU of children that exited and were reaped. It
never goes backwards between snapshots: a process that vanishes keeps its last
reading unless its parent in the role took it over as reaped children's time,
and a process that appears between two snapshots counts from its start.
"""

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Process identity across snapshots: a pid and its start time (pids are reused).
_Key = tuple[int, int]


@dataclass(frozen=True)
class ProcessRole:
    """A named set of processes whose CPU is summed."""

    name: str
    pids: Callable[[], set[int]]  # re-evaluated at each snapshot (children come and go)


@dataclass
class CpuReading:
    """CPU seconds per role over a :meth:`CpuMeter.measure` block, filled on its exit."""

    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Stat:
    ppid: int
    start: int
    own: float  # utime + stime, seconds
    children: float  # cutime + cstime, seconds: reaped children


def _read_stat(pid: int) -> _Stat | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 2 (comm) is parenthesised and may hold spaces and parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): field n is fields[n - 3].
    return _Stat(
        ppid=int(fields[1]),
        start=int(fields[19]),
        own=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        children=(int(fields[13]) + int(fields[14])) / CLOCK_TICKS,
    )


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


@dataclass
class _Seen:
    parent: _Key | None  # the parent's key when the parent is in the role
    total: float  # what this process contributed at its last snapshot
    children: float  # its cutime + cstime then
    reaper: bool  # it has had children in the role: its cutime + cstime count
    base: float  # cutime + cstime from before it became a reaper, not counted


class _RoleTally:
    """The running CPU total of one role across snapshots."""

    def __init__(self, role: ProcessRole) -> None:
        self.role = role
        self.seen: dict[_Key, _Seen] = {}
        self.gone = 0.0  # CPU of processes no longer in the role

    def snapshot(self) -> float:
        stats: dict[int, _Stat] = {}
        for pid in self.role.pids():
            stat = _read_stat(pid)
            if stat is not None:
                stats[pid] = stat
        keys = {pid: (pid, stat.start) for pid, stat in stats.items()}
        with_children = {keys[stat.ppid] for stat in stats.values() if stat.ppid in keys}
        now: dict[_Key, _Seen] = {}
        for pid, stat in stats.items():
            key = keys[pid]
            before = self.seen.get(key)
            reaper = key in with_children or (before is not None and before.reaper)
            if before is None:
                base = 0.0  # new since the last snapshot: all of it counts
            elif before.reaper:
                base = before.base
            else:
                base = before.children  # its children reaped since the last snapshot count
            now[key] = _Seen(
                parent=keys.get(stat.ppid),
                total=stat.own + (stat.children - base if reaper else 0.0),
                children=stat.children,
                reaper=reaper,
                base=base,
            )
        # A vanished process's time either moved into its (live, counted) parent's
        # cutime + cstime when the parent reaped it, or is kept here as last seen.
        expected: dict[_Key, float] = {}
        for key, seen in self.seen.items():
            if key in now:
                continue
            parent = seen.parent
            if parent is not None and parent in now and now[parent].reaper:
                expected[parent] = expected.get(parent, 0.0) + seen.total
            else:
                self.gone += seen.total
        for parent, owed in expected.items():
            grew = now[parent].children - self.seen[parent].children
            self.gone += max(0.0, owed - grew)
        self.seen = now
        return self.gone + sum(seen.total for seen in now.values())


class CpuMeter:
    """CPU seconds used by each of ``roles``, from ``/proc/<pid>/stat``."""

    def __init__(self, roles: Sequence[ProcessRole]) -> None:
        names = [role.name for role in roles]
        if len(set(names)) != len(names):
            raise ValueError(f"role names must differ: {names}")
        self._tallies = [_RoleTally(role) for role in roles]

    def snapshot(self) -> dict[str, float]:
        """CPU seconds per role so far (a running total: subtract two snapshots)."""
        return {tally.role.name: tally.snapshot() for tally in self._tallies}

    @contextmanager
    def measure(self) -> Iterator[CpuReading]:
        """CPU seconds per role used inside the block, in ``reading.seconds`` on exit."""
        reading = CpuReading()
        before = self.snapshot()
        try:
            yield reading
        finally:
            after = self.snapshot()
            reading.seconds.update({name: after[name] - before[name] for name in after})


def descendants(pid: int) -> set[int]:
    """``pid`` and all its descendants that are alive (empty if ``pid`` is not)."""
    children: dict[int, list[int]] = {}
    alive = set()
    for other in _all_pids():
        stat = _read_stat(other)
        if stat is not None:
            alive.add(other)
            children.setdefault(stat.ppid, []).append(other)
    if pid not in alive:
        return set()
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _names_in(argument: str) -> list[str]:
    """The names a command-line argument gives: a path's last part and its dotted parts."""
    if "://" in argument:  # a URL names a service it talks to, not the process
        return []
    base = argument.rstrip("/").rsplit("/", 1)[-1]
    return [base, *base.split(".")]


def pids_named(*names: str) -> set[int]:
    """Processes whose name is one of ``names``: ``/proc/<pid>/comm``, the basename of
    argv[0] (a trailing ``:`` of a process title dropped), or a script or module in
    the command line (``milvus`` matches ``python -m devstack.milvus_lite_server``)."""
    wanted = set(names)
    pattern = re.compile(rf"^(?:{'|'.join(map(re.escape, names))})(?:[_-].*)?$")
    found = set()
    for pid in _all_pids():
        try:
            comm = (PROC / str(pid) / "comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        argv = _cmdline(pid)
        title = argv[0].split() if argv else []
        first = title[0].rstrip(":").rsplit("/", 1)[-1] if title else ""
        named = (name for arg in argv[1:] for name in _names_in(arg))
        if comm in wanted or first in wanted or any(pattern.match(name) for name in named):
            found.add(pid)
    return found


_LOCAL_HOSTS = {"0100007F", "00000000", "00000000000000000000000000000000",
                "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}  # fmt: skip
_LISTEN = "0A"


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            host, _, hex_port = fields[1].partition(":")
            if fields[3] == _LISTEN and int(hex_port, 16) == port and host in _LOCAL_HOSTS:
                inodes.add(fields[9])
    return inodes


def listening_pid(port: int) -> set[int]:
    """The pid(s) owning a LISTEN socket on 127.0.0.1:``port`` (or on every address)."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not inodes:
        return set()
    owners = set()
    for pid in _all_pids():
        try:
            fds = list((PROC / str(pid) / "fd").iterdir())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    owners.add(pid)
                    break
            except OSError:
                continue
    return owners


def cpu_description() -> str:
    """The CPU model, the cores this process may use and its vector extensions, e.g.
    ``Intel(R) Xeon(R) Processor, 2 cores, AVX-512 (avx512f avx512_vnni avx512_bf16)``."""
    model, flags = "unknown CPU", set()
    for line in (PROC / "cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    cores = len(os.sched_getaffinity(0))
    if "avx512f" in flags:
        present = [flag for flag in ("avx512f", "avx512_vnni", "avx512_bf16") if flag in flags]
        vectors = f"AVX-512 ({' '.join(present)})"
    elif "avx2" in flags:
        vectors = "AVX2, no AVX-512" + (" (avx_vnni)" if "avx_vnni" in flags else "")
    else:
        vectors = "no AVX2"
    return f"{model}, {cores} cores, {vectors}"
