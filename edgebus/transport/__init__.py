"""Transports: each presents an accepted connection as a trio Stream."""
