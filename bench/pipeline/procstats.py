"""CPU and RSS of each service as a process tree (the decoder agent with its decoder processes, PostgreSQL
with its backends), from /proc through psutil.

CPU time of a tree = user + system of every live process in it, plus the children it has reaped (psutil's
``children_user`` / ``children_system``), so a decoder process that ended still counts in its agent's total.
``cpu_pct`` is percent of one core (two saturated cores = 200).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import psutil


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def tree_cpu_s(pid: int) -> float:
    total = 0.0
    for proc in tree(pid):
        try:
            total += _cpu_s(proc)
        except psutil.NoSuchProcess:
            continue
    return total


def tree_rss_mb(pid: int) -> float:
    total = 0
    for proc in tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def tree_uss_mb(pid: int) -> float:
    """Private memory (USS) of the tree: what it would free on exit; unlike RSS it does not count shared
    pages (PostgreSQL's shared buffers touched by each backend) once per process."""
    total = 0
    for proc in tree(pid):
        try:
            total += proc.memory_full_info().uss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def tree_private_mb(pid: int) -> tuple[float, float]:
    """(USS, PSS) of the tree in MB. PSS charges each shared page to its sharers in equal parts (a ring
    segment mapped by a decoder and by inference, PostgreSQL's shared buffers touched by every backend), so
    summed over processes it counts every page once: the fair measure of a tree's memory over time."""
    uss = pss = 0
    for proc in tree(pid):
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        uss += info.uss
        pss += getattr(info, "pss", info.uss)
    return uss / 2**20, pss / 2**20


def rss_mb(pid: int) -> float:
    """RSS of the process alone (without its children)."""
    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


@dataclass(frozen=True)
class Sample:
    wall: float
    cpu_s: dict[str, float]
    rss_mb: dict[str, float]


def sample(pids: Mapping[str, int], alone: Mapping[str, int] | None = None) -> Sample:
    """CPU seconds and RSS of each process tree in ``pids``, and of each process in ``alone`` without its
    children (e.g. the benchmark's own process, whose children are the stack)."""
    cpu = {name: tree_cpu_s(pid) for name, pid in pids.items()}
    rss = {name: tree_rss_mb(pid) for name, pid in pids.items()}
    for name, pid in (alone or {}).items():
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        cpu[name] = float(t.user + t.system)
        rss[name] = rss_mb(pid)
    return Sample(time.monotonic(), cpu, rss)


def cpu_pct(start: Sample, end: Sample) -> dict[str, float]:
    """Percent of one core per service between two samples."""
    elapsed = max(end.wall - start.wall, 1e-9)
    return {
        name: max(0.0, (end.cpu_s[name] - start.cpu_s.get(name, 0.0)) / elapsed * 100) for name in end.cpu_s
    }


def machine_busy_pct(interval: float | None = None) -> float:
    """Whole-machine CPU use in percent of all cores (psutil; non-blocking when interval is None)."""
    return float(psutil.cpu_percent(interval))
