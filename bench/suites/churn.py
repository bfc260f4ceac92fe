"""Suite ``churn``: scenario create / stop / delete cycles through the control API on a running stack, then
look for what they left behind.

The stack is bench/pipeline/stack.py's (as ``vap up`` starts it, one simulated RTSP camera). One cycle:
CreateScenario(start) of a channel reading the camera (SSDLite person, 5 fps), wait until ACTIVE (its
decoder process runs), StopScenario, wait until INACTIVE, DeleteScenario. ``WORKERS`` cycles run at once,
so starts and stops of different scenarios overlap as they do on a busy site. 1,000 cycles (quick: 100);
``WARMUP`` cycles first, not counted, so that what is loaded once (code paths, pools, caches) is not counted
as growth.

Rows, one per service (decoder agent, inference, tracker, control, nats, postgres): ``{"service",
"rss_start_mb", "rss_end_mb", "rss_growth_mb", "uss_growth_mb", "ok"}``: RSS of the service's main process
after the warm-up and after the last cycle, once things settled, and the growth of the private memory (USS)
of its whole process tree (PostgreSQL's backends, which RSS would charge for every shared buffer they
touched); then one row ``service = "leaks"`` with ``cycles``, ``seconds``, ``cycles_per_s``,
``leaked_processes`` (decoder processes of this stack's agent still alive after every stop) and
``leaked_shm`` (``/dev/shm/vap-ring-*`` segments of the cycled scenarios still there).
Target (DESIGN.md): no leaks, RSS growth < 20 MB per service.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.harness import Row, Suite, register
from bench.pipeline import procstats
from bench.pipeline.stack import BenchStack, running_stack
from vap_common import aio
from vap_proto.v1 import scenario_pb2

MODEL = "ssdlite-mbv2-person-300"
FPS = 5.0
WORKERS = 4
WARMUP = 8
MAX_GROWTH_MB = 20.0
SETTLE_S = 5.0
SERVICES = ("decoder", "inference", "tracker", "control", "nats", "postgres")
SHM_DIR = Path("/dev/shm")


async def cycle(bs: BenchStack, seen: list[str]) -> None:
    """One create(start) / stop / delete of a scenario; its id goes to ``seen``."""
    (sid,) = await bs.add_channels(1, MODEL, FPS)
    seen.append(sid)
    await bs.wait_status([sid], [scenario_pb2.SCENARIO_STATUS_ACTIVE], 60)
    await bs.remove_channels([sid], timeout=60)


async def cycles(bs: BenchStack, count: int, seen: list[str]) -> None:
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            await cycle(bs, seen)

    await asyncio.gather(*(worker() for _ in range(min(WORKERS, count))))


def leaked_rings(scenario_ids: list[str]) -> list[str]:
    """Ring segments in /dev/shm named after any of the scenarios (ring names carry the channel id = the
    scenario id)."""
    names = [p.name for p in SHM_DIR.glob("*vap-ring-*")]
    return [n for n in names if any(sid in n for sid in scenario_ids)]


def memory(bs: BenchStack) -> dict[str, tuple[float, float]]:
    """Service -> (RSS of the main process, USS of the tree), MB."""
    return {
        name: (procstats.rss_mb(pid), procstats.tree_uss_mb(pid))
        for name, pid in bs.service_pids().items()
        if name in SERVICES
    }


async def _settle() -> None:
    # Stopped decoders end, rings are removed and the services' queues drain within seconds.
    await asyncio.sleep(SETTLE_S)


async def _run(quick: bool) -> list[Row]:
    count = 100 if quick else 1000
    with tempfile.TemporaryDirectory(prefix="vap-bench-churn-") as tmp:
        async with running_stack(Path(tmp), [MODEL]) as bs:
            warm: list[str] = []
            await cycles(bs, WARMUP, warm)
            await _settle()
            start = memory(bs)
            seen: list[str] = []
            t0 = time.monotonic()
            progress = asyncio.create_task(_progress(seen, count))
            try:
                await cycles(bs, count, seen)
            finally:
                progress.cancel()
            seconds = time.monotonic() - t0
            await _settle()
            end = memory(bs)
            processes = bs.decoder_processes()
            rings = leaked_rings(warm + seen)
            reported = len(seen)
    rows: list[Row] = []
    for name in SERVICES:
        if name not in start or name not in end:
            continue
        rss = end[name][0] - start[name][0]
        uss = end[name][1] - start[name][1]
        rows.append(
            {
                "service": name,
                "rss_start_mb": round(start[name][0], 1),
                "rss_end_mb": round(end[name][0], 1),
                "rss_growth_mb": round(rss, 1),
                "uss_growth_mb": round(uss, 1),
                "ok": rss < MAX_GROWTH_MB and uss < MAX_GROWTH_MB,
            }
        )
    rows.append(
        {
            "service": "leaks",
            "cycles": reported,
            "seconds": round(seconds, 1),
            "cycles_per_s": round(reported / seconds, 2),
            "leaked_processes": len(processes),
            "leaked_shm": len(rings),
            "ok": not processes and not rings,
            "load1": round(os.getloadavg()[0], 2),
        }
    )
    return rows


async def _progress(seen: list[str], count: int) -> None:
    while True:
        await asyncio.sleep(15)
        print(f"  {len(seen)}/{count} cycles", flush=True)


def run(quick: bool) -> list[Row]:
    from bench.pipeline.stack import missing_reason

    if reason := missing_reason([MODEL]):
        raise RuntimeError(f"suite churn cannot run here: {reason}")
    return aio.run(_run(quick))


def summarize(rows: list[Row]) -> list[str]:
    growth = [r for r in rows if "rss_growth_mb" in r]
    leaks = next((r for r in rows if r["service"] == "leaks"), None)
    if leaks is None:
        return []
    worst = max(growth, key=lambda r: r["rss_growth_mb"]) if growth else None
    met = leaks["ok"] and all(r["ok"] for r in growth)
    return [
        f"target {leaks['cycles']} create/stop cycles: no leaked processes ({leaks['leaked_processes']}) "
        f"or shm segments ({leaks['leaked_shm']}), RSS growth < {MAX_GROWTH_MB:.0f} MB per service (largest: "
        f"{worst['service'] if worst else '-'} {worst['rss_growth_mb'] if worst else 0} MB) - "
        f"{'met' if met else 'MISSED'}"
    ]


register(
    Suite(
        name="churn",
        description="scenario create/stop/delete cycles: leaked processes and shm segments, RSS growth",
        run=run,
        columns=(
            "service",
            "rss_start_mb",
            "rss_end_mb",
            "rss_growth_mb",
            "uss_growth_mb",
            "cycles",
            "cycles_per_s",
            "leaked_processes",
            "leaked_shm",
            "ok",
        ),
        summarize=summarize,
    )
)
