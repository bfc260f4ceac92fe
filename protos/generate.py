"""Generate the Python contracts (messages, gRPC stubs and mypy stubs) from protos/vap/v1.

One command reproduces everything under protos/vap_proto/v1:

    python protos/generate.py          # (re)write the generated files
    python protos/generate.py --check  # exit 1 and list the stale files, writing nothing

protoc emits imports that follow the .proto paths (``from vap.v1 import x_pb2``); ``vap`` is taken on
PyPI, so the generated modules live in the package ``vap_proto.v1`` and their imports are rewritten.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
SOURCE_DIR = PROTOS_DIR / "vap" / "v1"
OUTPUT_DIR = PROTOS_DIR / "vap_proto" / "v1"
_IMPORT_RE = re.compile(r"^(from|import) vap\.v1(\b)", re.MULTILINE)
_PACKAGE_INIT = '"""Generated from protos/vap/v1 by protos/generate.py: do not edit."""\n'


def _rewrite_imports(text: str) -> str:
    return _IMPORT_RE.sub(r"\1 vap_proto.v1\2", text)


def render() -> dict[str, str]:
    """Run protoc and return {file name: content} of every generated file."""
    from grpc_tools import protoc  # imported here: a dev-only dependency

    protos = sorted(SOURCE_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {SOURCE_DIR}")
    include = Path(protoc.__file__).resolve().parent / "_proto"
    # The mypy-protobuf plugins sit beside this interpreter, which need not be on PATH.
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTOS_DIR}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out=quiet:{tmp}",
            f"--mypy_grpc_out=quiet:{tmp}",
            *(str(p.relative_to(PROTOS_DIR)) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out_dir = Path(tmp) / "vap" / "v1"
        files = {p.name: _rewrite_imports(p.read_text()) for p in sorted(out_dir.iterdir()) if p.is_file()}
    files["__init__.py"] = _PACKAGE_INIT
    return files


def stale_files(rendered: dict[str, str]) -> list[str]:
    """Names of generated files that are missing, different, or no longer produced."""
    present = {p.name for p in OUTPUT_DIR.glob("*") if p.is_file()} if OUTPUT_DIR.exists() else set()
    stale = [
        n
        for n, text in rendered.items()
        if not (OUTPUT_DIR / n).is_file() or (OUTPUT_DIR / n).read_text() != text
    ]
    stale += sorted(present - set(rendered) - {"py.typed"})
    return sorted(stale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="report stale files and exit 1, write nothing")
    args = parser.parse_args(argv)
    rendered = render()
    stale = stale_files(rendered)
    if args.check:
        for name in stale:
            print(f"stale: protos/vap_proto/v1/{name}")
        return 1 if stale else 0
    if OUTPUT_DIR.exists():
        shutil.rmtree(OUTPUT_DIR)
    OUTPUT_DIR.mkdir(parents=True)
    for name, text in rendered.items():
        (OUTPUT_DIR / name).write_text(text)
    (OUTPUT_DIR / "py.typed").write_text("")
    print(f"wrote {len(rendered)} files to {OUTPUT_DIR.relative_to(PROTOS_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
