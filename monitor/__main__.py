"""``python -m monitor`` is the ``riskmon`` command."""

import sys

from monitor.cli import main

sys.exit(main())
