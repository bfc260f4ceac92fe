"""``python -m vap_decoder agent [--config PATH]`` | ``python -m vap_decoder channel --restarts N``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command == "agent":
        from vap_decoder.service import main as agent_main

        return agent_main(rest)
    if command == "channel":
        from vap_decoder.process import run_channel

        return run_channel(rest)
    print(
        "usage: python -m vap_decoder agent [--config PATH]\n"
        "       python -m vap_decoder channel [--restarts N]   (StartChannel protobuf on stdin; the agent"
        " runs this)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
