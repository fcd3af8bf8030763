"""Pipelines: ``.mesh.yml`` in a repository, turned into one job of the node (mesh.sched.jobs),
and what a build's end sets off.

- :mod:`mesh.pipelines.pipefile`: parse and validate the file into a typed :class:`Pipeline`;
- :mod:`mesh.pipelines.compile`: a pipeline (and a repository snapshot) to a job's wire form;
- :mod:`mesh.pipelines.hooks`, :mod:`mesh.pipelines.deliveries`: a forge's webhook delivery
  checked with the project's secret and read; the delivery ids taken;
- :mod:`mesh.pipelines.notify`: which notifications a build's end sends, and sending them;
- :mod:`mesh.pipelines.buildmetrics`: builds by project and result, for /metrics;
- :mod:`mesh.pipelines.gitsnap`: a commit of a git repository fetched into the node's mirror
  (``$MESH_HOME/git/``) and snapshotted from git's objects, with no working copy;
- :mod:`mesh.pipelines.projects`: projects and numbered builds in the node's state database;
- :mod:`mesh.pipelines.builds`: a project's builds started, read and watched to their end;
- :mod:`mesh.pipelines.badge`: the SVG badge of a project's latest build.
- :mod:`mesh.pipelines.hookintake`: a push delivered to ``POST /v1/hooks/NAME`` fetched,
  read, snapshotted and started as the project's next build.

Each keeps a module of its own with a narrow interface. The layer sits above mesh.cluster
and mesh.sched, below mesh.api: nothing here serves HTTP or runs a task.
"""
