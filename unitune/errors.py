"""The one exception type for mistakes a user can fix."""

from __future__ import annotations

import sys
from typing import Callable


class UnituneError(Exception):
    """A user-fixable problem; entry scripts print its one-line message, never a traceback."""


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run an entry point, turning UnituneError into one line on stderr and exit status 2."""
    from unitune import quiet

    quiet.install()
    try:
        main(argv)
    except UnituneError as err:
        message = " ".join(str(err).split("\n"))
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
