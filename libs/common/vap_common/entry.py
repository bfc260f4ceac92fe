"""The command line of every service process: ``python -m vap_<service> [--config FILE]``.

One place decides how a service starts: its settings from the YAML file (``--config`` or $VAP_CONFIG) and the
environment, a settings error printed as one line naming the service and the field with exit code 2 (never
a traceback), then the service's ``run`` on the uvloop-backed event loop (vap_common.aio). NATS refusing the
service's credentials is a settings error too: one line naming the user, exit code 2. The embedded
server fallback is the same for all of them too (vap_common.embedded.service_endpoints).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from vap_common import aio
from vap_common.nats_auth import NatsAuthError
from vap_common.settings import ServiceSettings, SettingsError

S = TypeVar("S", bound=ServiceSettings)


def service_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    settings_type: type[S],
    run: Callable[[S], Coroutine[Any, Any, int | None]],
    check: Callable[[S], object] | None = None,
) -> int:
    """Parse ``--config``, load ``settings_type`` (and ``check`` it: SettingsError for bad values the model
    cannot express), run ``run`` to its end; its int result (None = 0) is the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    section = settings_type.yaml_section
    parser.add_argument("--config", help=f"YAML settings file (section '{section}'); default $VAP_CONFIG")
    args = parser.parse_args(argv)
    try:
        settings = settings_type.load(args.config)
        if check is not None:
            check(settings)
    except SettingsError as exc:
        sys.stderr.write(f"{prog.removeprefix('python -m ')}: {exc}\n")
        return 2
    try:
        return aio.run(run(settings)) or 0
    except NatsAuthError as exc:
        sys.stderr.write(f"{prog.removeprefix('python -m ')}: {exc}\n")
        return 2
