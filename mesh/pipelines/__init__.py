"""Pipelines: the ``.mesh.yml`` of a repository, its projects, builds, webhooks, notifications and build metrics.

A layer above the cluster and the scheduler and below the API: it turns a repository's
pipeline into jobs and announces their end; the API's handlers call it.
"""
