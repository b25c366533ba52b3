"""``python -m mossvl``: the ``mossvl`` command."""

import sys

from mossvl.cli.main import main

sys.exit(main())
