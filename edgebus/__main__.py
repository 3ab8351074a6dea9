"""`python -m edgebus` runs the command line."""

from edgebus.cli import main

raise SystemExit(main())
