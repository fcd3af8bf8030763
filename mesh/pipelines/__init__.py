"""Pipelines: ``.mesh.yml`` in a repository, turned into one job of the node (mesh.sched.jobs).

- :mod:`mesh.pipelines.pipefile`: parse and validate the file into a typed :class:`Pipeline`;
- :mod:`mesh.pipelines.compile`: a pipeline (and a repository snapshot) to a job's wire form.

Projects, build numbers, webhooks and notifications join here later; each keeps a module of
its own with a narrow interface. The layer sits above mesh.cluster and mesh.sched, below
mesh.api: nothing here speaks HTTP or runs a task.
"""
