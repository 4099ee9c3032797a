"""Exit statuses of every ``edgewatch`` subcommand, and the one way to report a usage error."""

from __future__ import annotations

import sys
from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
# The operator must fix something (config, arguments, model): systemd's unit does not restart
# on it (RestartPreventExitStatus=2).
EXIT_USAGE: Final = 2


def usage_error(message: str) -> int:
    """Report an operator mistake as one line on stderr (never a traceback); ``EXIT_USAGE``."""
    print(message, file=sys.stderr)
    return EXIT_USAGE
