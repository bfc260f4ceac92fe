"""``python -m vap_dataset``: the dataset capture process."""

from __future__ import annotations

import sys

from vap_common.entry import service_main
from vap_dataset.service import run
from vap_dataset.settings import DatasetSettings


def main(argv: list[str] | None = None) -> int:
    return service_main(
        argv,
        prog="python -m vap_dataset",
        description="VAP dataset capture",
        settings_type=DatasetSettings,
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
