"""Fault injection: configurable adapters around the real ones (see :mod:`.wrappers`)."""
