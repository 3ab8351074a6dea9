"""``python -m edgebus_fleet`` runs the edgebus-fleet command."""

from edgebus_fleet.cli import main

raise SystemExit(main())
