"""Child processes of the multi-process shmring tests, run as ``python shmring_workers.py <role> ...``.

Kept as a script (not multiprocessing targets) so children import nothing from the test tree, start the
same way under any pytest import mode, and can be SIGKILLed.
Each prints ``READY ...`` once set up and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

from vap_proto.v1.frame_pb2 import FrameRef
from vap_shmring import RingReader, RingWriter, StaleGenerationError
from vap_shmring.geometry import SUPPORTED_FORMATS
from vap_shmring.testing import fill_uniform, rich_ok, uniform_ok


def fast_writer(args: argparse.Namespace) -> None:
    """Commit uniform frames as fast as possible until the deadline (or SIGKILL)."""
    fmt = SUPPORTED_FORMATS[args.format]
    with RingWriter.create(
        args.channel, width=args.width, height=args.height, pixel_format=fmt, slots=args.slots
    ) as w:
        print("READY", w.name, flush=True)
        deadline = time.monotonic() + args.seconds
        sequence = 0
        while time.monotonic() < deadline:
            fill_uniform(w.begin(), sequence)
            w.commit(sequence=sequence)
            sequence += 1
        print(json.dumps({"frames": sequence}), flush=True)


def exit_without_close(args: argparse.Namespace) -> None:
    """Create a ring, commit one frame, and die without any cleanup (no finalisers, no atexit)."""
    w = RingWriter.create(args.channel, width=16, height=16, pixel_format=SUPPORTED_FORMATS[0], slots=2)
    fill_uniform(w.begin(), 0)
    w.commit(sequence=0)
    print("READY", w.name, flush=True)
    os._exit(0)


def ref_reader(args: argparse.Namespace) -> None:
    """Read hex-encoded FrameRefs from stdin, verify each frame's rich content."""
    with RingReader.attach(args.ring) as reader:
        print("READY", flush=True)
        ok = bad = stale = 0
        sequences = []
        for line in sys.stdin:
            ref = FrameRef.FromString(bytes.fromhex(line.strip()))
            try:
                with reader.read(ref) as frame:
                    good = rich_ok(frame, ref.sequence)
            except StaleGenerationError:
                stale += 1
                continue
            ok += good
            bad += not good
            sequences.append(ref.sequence)
        print(
            json.dumps(
                {"ok": ok, "bad": bad, "stale": stale, "sequences": sequences, "counted": reader.stale_reads}
            )
        )


def slow_reader(args: argparse.Namespace) -> None:
    """Poll latest(), verify, dawdle, check: classify every read as accepted / torn-accepted / stale."""
    rng = random.Random(args.seed)
    stats = {"accepted": 0, "torn_accepted": 0, "stale_at_view": 0, "stale_at_check": 0, "torn_caught": 0}
    with RingReader.attach(args.ring) as reader:
        print("READY", flush=True)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            ref = reader.latest()
            if ref is None:
                continue
            try:
                frame = reader.view(ref)
            except StaleGenerationError:
                stats["stale_at_view"] += 1
                continue
            consistent = uniform_ok(frame, ref.sequence)
            if rng.random() < 0.3:
                time.sleep(rng.random() * 2e-4)
            try:
                reader.check(ref)
            except StaleGenerationError:
                stats["stale_at_check"] += 1
                stats["torn_caught"] += not consistent
                continue
            stats["accepted"] += 1
            stats["torn_accepted"] += not consistent
            if (
                stats["torn_caught"] >= args.enough
                and stats["accepted"] >= args.enough
                and stats["stale_at_check"] >= args.enough
            ):
                break
        stats["counted"] = reader.stale_reads
    print(json.dumps(stats), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("fast-writer")
    p.add_argument("--channel", required=True)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--format", type=int, default=0, help="index into SUPPORTED_FORMATS")
    p.add_argument("--slots", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30.0)
    p = sub.add_parser("exit-without-close")
    p.add_argument("--channel", required=True)
    p = sub.add_parser("ref-reader")
    p.add_argument("--ring", required=True)
    p = sub.add_parser("slow-reader")
    p.add_argument("--ring", required=True)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--enough", type=int, default=20)
    args = parser.parse_args()
    {
        "fast-writer": fast_writer,
        "exit-without-close": exit_without_close,
        "ref-reader": ref_reader,
        "slow-reader": slow_reader,
    }[args.role](args)


if __name__ == "__main__":
    main()
