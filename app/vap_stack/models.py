"""``python -m vap_stack.models list|fetch`` (and ``vap models``): the model build tools' command
(vap_modelbuild.cli) with the inference service's detector for the checks and builds that run one.

It lives in the app layer because it joins the two: the build tools import only libraries, and the
detector they are given (vap_inference.modelfiles.OrtDetectorRuntime) is the inference service's code.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from vap_inference.modelfiles import OrtDetectorRuntime
    from vap_modelbuild import cli

    return cli.main(argv, OrtDetectorRuntime())


if __name__ == "__main__":
    sys.exit(main())
