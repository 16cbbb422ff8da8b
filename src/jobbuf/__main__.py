"""``python -m jobbuf`` runs the ``jobbuf`` command."""

import sys

from ._cli import main

sys.exit(main())
