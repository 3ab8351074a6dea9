"""The sans-IO core: MQTT rules, sessions, routing and queues. Imports no trio, socket, sqlite3 or clock."""
