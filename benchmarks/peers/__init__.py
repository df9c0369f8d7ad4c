"""Peers the fleet is compared with (not part of the package): the Celery prefork worker."""
