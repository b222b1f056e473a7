"""CPU time and resident memory of a process tree, from /proc (Linux; CPU in 10 ms ticks)."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> tuple[set[int], dict[int, float]]:
    """``pid`` and every process below it; every process's user + system CPU seconds."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICKS
    wanted, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, of in parents.items() if of == parent and child not in wanted]
        wanted.update(children)
        frontier.extend(children)
    return wanted, cpu


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and every process below it."""
    wanted, cpu = _tree(pid)
    return sum(cpu.get(each, 0.0) for each in wanted)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory (VmRSS) of ``pid`` and every process below it."""
    total = 0
    for each in _tree(pid)[0]:
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total
