"""`python -m jobserver`: the same as the `jobserver` command (jobserver/cli/)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
