"""``python -m focalnet`` (also what ``torchrun -m focalnet`` runs)."""

import sys

from .cli import main

sys.exit(main())
