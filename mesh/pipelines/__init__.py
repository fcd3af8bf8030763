"""Pipelines: ``.mesh.yml``, projects, build numbers, webhooks, notifications and build metrics.

Above the scheduler and the cluster, below the API (the layers in pyproject.toml).
"""
