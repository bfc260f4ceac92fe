"""``python -m vap_dataset``: the dataset capture process."""

from __future__ import annotations

import sys

from vap_common import aio
from vap_common.settings import SettingsError
from vap_dataset.service import run
from vap_dataset.settings import DatasetSettings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = DatasetSettings.load()
    except SettingsError as exc:
        sys.stderr.write(f"vap_dataset: {exc}\n")
        return 2
    aio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
