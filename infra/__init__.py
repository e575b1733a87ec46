"""What deploy.sh provisions, declared once (resources.py) and ensured (provision.py)."""
