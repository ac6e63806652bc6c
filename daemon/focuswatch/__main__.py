"""``python -m focuswatch`` is the same as the ``focuswatch`` command."""

import sys

from focuswatch.cli import main

sys.exit(main())
