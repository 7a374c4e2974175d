"""``python -m robustlab`` is the ``robustlab`` command."""

from .cli.main import main

raise SystemExit(main())
