"""``python -m gswfast`` runs the ``gswfast`` command."""

import sys

from gswfast.cli import main

sys.exit(main())
