"""``python -m mmbench``: the same as the ``mmbench`` command."""

import sys

from mmbench.commands import main

sys.exit(main())
