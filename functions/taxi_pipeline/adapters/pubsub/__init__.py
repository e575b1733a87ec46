"""Pub/Sub: the cloud bus."""
