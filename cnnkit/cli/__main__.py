"""``python -m cnnkit.cli``: the ``cnnkit`` command."""
import sys

from . import main

sys.exit(main())
