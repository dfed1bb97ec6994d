"""``python -m MedSegReasoning.server [options]``: the ``serve`` command without the rest of the CLI."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
