"""``mesh cc``: compiles spread over the mesh, answered by its action cache.

Two halves that share only :mod:`mesh.cc.frames` (the wire) and :mod:`mesh.cc.args` (what
a compile's flags mean: the service reads whether one writes debug information):

- the **wrapper** (:mod:`mesh.cc.wrapper`, with :mod:`mesh.cc.args`,
  :mod:`mesh.cc.frames` and :mod:`mesh.cc.stats`, which counts what became of each call
  for ``mesh cc --stats``), run once per compile: the standard library only, so that its
  start-up is the only overhead a local compile pays;
- the node's **service** (:mod:`mesh.cc.service`, :mod:`mesh.cc.compilers`,
  :mod:`mesh.cc.prefixmaps`), which turns a compile into a one-task job on the node's
  scheduler: placed on a node with the same compiler, answered from the mesh-wide action
  cache when any node compiled it before; and which keeps in that cache the compiles the
  wrapper must run itself (:mod:`mesh.cc.keptcompiles`).

Nothing in this package may import trio, httpx or the node at module level except the
service modules, which only the node imports.
"""
