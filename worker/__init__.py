"""Celery workers of the NeRN service: `celery_app` (configuration) and `tasks` (thin tasks)."""
