"""Pipelines: the pipeline file in a repository, projects and their builds, webhook triggers, notifications."""
