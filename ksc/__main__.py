"""``python -m ksc``: the same as the ``ksc`` command."""

import sys

from ksc.cli import main

sys.exit(main())
