"""``python -m pfadseg`` is the ``pfadseg`` command (also what torchrun launches)."""

from pfadseg.cli import main

raise SystemExit(main())
