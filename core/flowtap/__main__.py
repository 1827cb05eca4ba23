"""``python -m flowtap``: the same as the ``flowtap`` command."""

import sys

from flowtap.cli import main

sys.exit(main())
