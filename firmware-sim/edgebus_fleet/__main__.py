"""``python -m edgebus_fleet`` runs the edgebus-fleet command."""

from edgebus_fleet.launch import main

raise SystemExit(main())
