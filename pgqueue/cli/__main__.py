"""``python -m pgqueue.cli``, as ``pgqueue``."""

from pgqueue.cli.entry import main

raise SystemExit(main())
