"""``.mesh.yml``: the pipeline file of a repository, parsed and validated into a :class:`Pipeline`.

The file is read with PyYAML's SafeLoader only (no Python objects, no custom tags) and
*composed*, not constructed: the walk below validates the composed nodes, whose marks
give every error its line, as ``.mesh.yml:7: steps[1].depends_on: unknown step 'biuld'``.

The validation is written by hand against the node tree rather than with jsonschema: a
schema library reports JSON-pointer paths on already constructed dicts, which have lost
their lines (a path-to-line table would have to be built from the nodes anyway), and half
the rules are not schema rules (a step named twice, an unknown step in ``depends_on``, a
cycle, the size of a matrix's product, a path that escapes the tree). One walk does both
and builds the typed result directly.

The shape (every key but ``steps``, a step's ``name`` and ``run`` optional)::

    env: {K: V}                      # for every step
    steps:
      - name: build                  # unique; letters, digits, _ . - (up to 64)
        run: make -j8                # a string (sh -c) or a list (an argv)
        image: localhost/builder:1   # the docker executor; or executor: sandbox|process|docker
        outputs: [build/]            # paths the steps that depend on this one see
        depends_on: [other]          # none anywhere: each step runs after the one before it
        when: {status: [failure], branch: ["main", "release/*"]}
        matrix: {SHARD: [1, 2, 3]}   # one task per combination (the product; at most 256)
        env: {K: V}
        requires: {gpu: "1"}         # node labels (mesh up --label gpu=1)
        timeout: 600                 # seconds
        network: true
        cache: false                 # never answered from the action cache
    notify:
      - webhook: https://chat.example/hooks/abc
        on: [failure, fixed]         # always, success, failure, fixed, broken
      - email: team@example.com
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import yaml

from mesh.errors import CodecError, PipelineError
from mesh.exec.action import EXECUTORS, MAX_TIMEOUT, check_relative
from mesh.sched.jobs import find_cycle

#: The file's name at the root of a tree.
FILENAME = ".mesh.yml"
#: Largest pipeline file read, in bytes (a pipeline is a page of text, not data).
MAX_BYTES = 1 << 20
#: Most tasks one matrix may fan a step out into.
MAX_MATRIX = 256
#: Most steps in one file.
MAX_STEPS = 1000

Status = Literal["success", "failure", "always"]
NotifyOn = Literal["always", "success", "failure", "fixed", "broken"]
STATUSES: tuple[Status, ...] = get_args(Status)
NOTIFY_ON: tuple[NotifyOn, ...] = get_args(NotifyOn)

#: The keys a step may have, in the order the README gives them.
STEP_KEYS: tuple[str, ...] = ("name", "run", "image", "executor", "outputs", "depends_on", "when", "matrix")
STEP_KEYS += ("env", "requires", "timeout", "network", "cache")
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_STEP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass(frozen=True, kw_only=True)
class When:
    """When a step runs: its dependencies' outcome (``status``) and the build's branch (globs;
    empty: every branch)."""

    status: Status = "success"
    branch: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Step:
    """One step of a pipeline; ``line`` is where it starts in the file (for later errors)."""

    name: str
    argv: tuple[str, ...]
    line: int
    image: str | None = None
    executor: str | None = None  # None: docker with an image, else the node's default
    outputs: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    when: When = When()
    matrix: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (VAR, values) in file order
    env: tuple[tuple[str, str], ...] = ()
    requires: tuple[tuple[str, str], ...] = ()
    timeout: float | None = None
    network: bool = False
    cache: bool = True

    def combinations(self) -> list[tuple[tuple[str, str], ...]]:
        """The matrix's product, each a tuple of (VAR, value); one empty tuple without a matrix."""
        names = [var for var, _ in self.matrix]
        return [tuple(zip(names, values, strict=True)) for values in itertools.product(*(v for _, v in self.matrix))]


@dataclass(frozen=True, kw_only=True)
class Notify:
    """Where to announce a build's end: exactly one of ``webhook`` (an http(s) URL) and ``email``."""

    on: tuple[NotifyOn, ...]
    webhook: str | None = None
    email: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The entry as a build carries it (mesh.pipelines.builds.targets reads it back)."""
        wire: dict[str, Any] = {"on": list(self.on)}
        if self.webhook is not None:
            wire["webhook"] = self.webhook
        if self.email is not None:
            wire["email"] = self.email
        return wire


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """A validated pipeline file. ``ordered``: no step names ``depends_on``, so each step runs
    after the one before it (mesh.pipelines.compile)."""

    steps: tuple[Step, ...]
    env: tuple[tuple[str, str], ...] = ()
    notify: tuple[Notify, ...] = ()
    filename: str = FILENAME

    @property
    def ordered(self) -> bool:
        return not any(step.depends_on for step in self.steps)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


def load(path: str, filename: str = FILENAME) -> Pipeline:
    """Read and parse the pipeline file at ``path``; PipelineError (with its line) if it is wrong."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise PipelineError(f"{filename}: no such file: write the pipeline there (see README, Pipelines)") from None
    except OSError as exc:
        raise PipelineError(f"{filename}: cannot read it: {exc.strerror or exc}") from None
    return parse(data, filename)


def parse(data: bytes | str, filename: str = FILENAME) -> Pipeline:
    """Parse the text of a pipeline file; PipelineError names the file, line and key of what is wrong."""
    if len(data) > MAX_BYTES:
        raise PipelineError(f"{filename}: larger than {MAX_BYTES} bytes; a pipeline file is a page of text")
    try:
        root = yaml.compose(data, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 1
        raise PipelineError(f"{filename}:{line}: not valid YAML: {exc.problem or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{filename}: not valid YAML: {exc}") from None
    if root is None:
        raise PipelineError(f"{filename}:1: the file is empty; it needs 'steps'")
    return _Walk(filename).pipeline(root)


T = TypeVar("T")


class _Walk:
    """Validates composed YAML nodes, raising PipelineError with the file, the line and the key path."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def fail(self, node: yaml.Node, where: str, message: str) -> PipelineError:
        prefix = f"{where}: " if where else ""
        return PipelineError(f"{self.filename}:{node.start_mark.line + 1}: {prefix}{message}")

    # -- shapes -----------------------------------------------------------------------

    def check_tag(self, node: yaml.Node, where: str) -> None:
        """Refuse an explicit tag outside YAML's own (``!!python/object``, ``!custom``): the file is
        data, and composing never constructs one, but a typo'd tag deserves a word, not a guess."""
        if not node.tag.startswith("tag:yaml.org,2002:") or node.tag.startswith("tag:yaml.org,2002:python/"):
            raise self.fail(node, where, f"the tag {node.tag!r} is not allowed here (plain YAML only)")

    def mapping(self, node: yaml.Node, where: str, keys: tuple[str, ...]) -> dict[str, yaml.Node]:
        """A mapping of known string keys (each once) to their value nodes."""
        self.check_tag(node, where)
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, where, f"must be a mapping (key: value), not {_kind(node)}")
        found: dict[str, yaml.Node] = {}
        for key_node, value in node.value:
            key = self.key(key_node, where)
            path = f"{where}.{key}" if where else key
            if key not in keys:
                raise self.fail(key_node, path, f"unknown key; expected one of {', '.join(keys)}")
            if key in found:
                raise self.fail(key_node, path, "given twice")
            found[key] = value
        return found

    def pairs(self, node: yaml.Node, where: str) -> list[tuple[yaml.Node, yaml.Node]]:
        """A mapping of any keys, as (key node, value node) pairs (a key given twice refused)."""
        self.check_tag(node, where)
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, where, f"must be a mapping (key: value), not {_kind(node)}")
        seen: set[str] = set()
        for key_node, _ in node.value:
            key = self.key(key_node, where)
            if key in seen:
                raise self.fail(key_node, f"{where}.{key}", "given twice")
            seen.add(key)
        return list(node.value)

    def sequence(self, node: yaml.Node, where: str) -> list[yaml.Node]:
        self.check_tag(node, where)
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, where, f"must be a list, not {_kind(node)}")
        return list(node.value)

    def key(self, node: yaml.Node, where: str) -> str:
        """A mapping's key as written: YAML 1.1 reads a bare ``on`` as true, which no key here means."""
        self.check_tag(node, where)
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            raise self.fail(node, where, f"a key must be a name, not {_kind(node)}")
        return str(node.value)

    def scalar_text(self, node: yaml.Node, where: str) -> str:
        """A scalar as the text an environment variable holds: strings as written, numbers as
        written in the file (``01`` stays ``01``), booleans as true/false; null refused."""
        self.check_tag(node, where)
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            raise self.fail(node, where, f"must be a string or a number, not {_kind(node)}")
        if node.tag == "tag:yaml.org,2002:bool":
            return "true" if _construct(node) else "false"
        if "\0" in node.value:
            raise self.fail(node, where, "must not contain NUL")
        return str(node.value)

    def text(self, node: yaml.Node, where: str) -> str:
        """A string (a scalar the YAML resolver reads as a string, not a number or a boolean)."""
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            raise self.fail(node, where, f"must be a string, not {_kind(node)}")
        if "\0" in node.value:
            raise self.fail(node, where, "must not contain NUL")
        return str(node.value)

    def texts(self, node: yaml.Node, where: str) -> list[str]:
        return [self.text(item, f"{where}[{i}]") for i, item in enumerate(self.sequence(node, where))]

    def flag(self, node: yaml.Node, where: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise self.fail(node, where, f"must be true or false, not {_kind(node)}")
        return bool(_construct(node))

    def choice(self, node: yaml.Node, where: str, choices: tuple[T, ...]) -> T:
        value = self.text(node, where)
        for choice in choices:
            if value == choice:
                return choice
        raise self.fail(node, where, f"{value!r} is not one of {', '.join(map(str, choices))}")

    def choices(self, node: yaml.Node, where: str, choices: tuple[T, ...]) -> tuple[T, ...]:
        items = self.sequence(node, where)
        if not items:
            raise self.fail(node, where, f"must name at least one of {', '.join(map(str, choices))}")
        return tuple(dict.fromkeys(self.choice(item, f"{where}[{i}]", choices) for i, item in enumerate(items)))

    def env(self, node: yaml.Node, where: str) -> tuple[tuple[str, str], ...]:
        env = {}
        for key_node, value in self.pairs(node, where):
            key = self.key(key_node, where)
            if not _VAR.fullmatch(key):
                raise self.fail(key_node, f"{where}.{key}", "not a variable name (letters, digits, _)")
            env[key] = self.scalar_text(value, f"{where}.{key}")
        return tuple(env.items())

    def checked(self, node: yaml.Node, where: str, check: Callable[[], T]) -> T:
        """``check()``, its CodecError (mesh's own rules: paths, timeouts) given this node's line."""
        try:
            return check()
        except CodecError as exc:
            raise self.fail(node, where, str(exc)) from None

    # -- the file -----------------------------------------------------------------------

    def pipeline(self, root: yaml.Node) -> Pipeline:
        top = self.mapping(root, "", ("steps", "env", "notify"))
        if "steps" not in top:
            raise self.fail(root, "", "the pipeline needs 'steps' (a list of steps)")
        step_nodes = self.sequence(top["steps"], "steps")
        if not step_nodes:
            raise self.fail(top["steps"], "steps", "needs at least one step")
        if len(step_nodes) > MAX_STEPS:
            raise self.fail(top["steps"], "steps", f"at most {MAX_STEPS} steps, not {len(step_nodes)}")
        steps = [self.step(node, f"steps[{i}]") for i, node in enumerate(step_nodes)]
        self.check_graph(steps, step_nodes)
        env = self.env(top["env"], "env") if "env" in top else ()
        notify: tuple[Notify, ...] = ()
        if "notify" in top:
            notify = tuple(self.notify(n, f"notify[{i}]") for i, n in enumerate(self.sequence(top["notify"], "notify")))
        return Pipeline(steps=tuple(steps), env=env, notify=notify, filename=self.filename)

    def step(self, node: yaml.Node, where: str) -> Step:
        keys = STEP_KEYS
        fields = self.mapping(node, where, keys)
        for required in ("name", "run"):
            if required not in fields:
                raise self.fail(node, where, f"a step needs '{required}'")
        name = self.text(fields["name"], f"{where}.name")
        if not _STEP_NAME.fullmatch(name):
            raise self.fail(
                fields["name"],
                f"{where}.name",
                f"{name!r}: use up to 64 letters, digits and _ . -, not starting with . or -",
            )
        run = fields["run"]
        if isinstance(run, yaml.SequenceNode):
            argv = tuple(self.texts(run, f"{where}.run"))
            if not argv or not argv[0]:
                raise self.fail(run, f"{where}.run", "an argv list needs a command first")
        else:
            script = self.text(run, f"{where}.run")
            if not script.strip():
                raise self.fail(run, f"{where}.run", "is empty")
            argv = ("sh", "-c", script)
        image = self.text(fields["image"], f"{where}.image") if "image" in fields else None
        executor = self.choice(fields["executor"], f"{where}.executor", EXECUTORS) if "executor" in fields else None
        if image is not None and executor not in (None, "docker"):
            raise self.fail(fields["executor"], f"{where}.executor", f"an image runs in docker, not {executor}")
        if executor == "docker" and image is None:
            raise self.fail(fields["executor"], f"{where}.executor", "docker needs an 'image'")
        outputs: tuple[str, ...] = ()
        if "outputs" in fields:
            items = self.sequence(fields["outputs"], f"{where}.outputs")
            outputs = tuple(
                self.checked(item, f"{where}.outputs[{i}]", _relative(self.text(item, f"{where}.outputs[{i}]")))
                for i, item in enumerate(items)
            )
        depends_on = tuple(self.texts(fields["depends_on"], f"{where}.depends_on")) if "depends_on" in fields else ()
        timeout = None
        if "timeout" in fields:
            timeout = self.timeout(fields["timeout"], f"{where}.timeout")
        return Step(
            name=name,
            argv=argv,
            line=node.start_mark.line + 1,
            image=image,
            executor=executor,
            outputs=outputs,
            depends_on=depends_on,
            when=self.when(fields["when"], f"{where}.when") if "when" in fields else When(),
            matrix=self.matrix(fields["matrix"], f"{where}.matrix") if "matrix" in fields else (),
            env=self.env(fields["env"], f"{where}.env") if "env" in fields else (),
            requires=self.requires(fields["requires"], f"{where}.requires") if "requires" in fields else (),
            timeout=timeout,
            network=self.flag(fields["network"], f"{where}.network") if "network" in fields else False,
            cache=self.flag(fields["cache"], f"{where}.cache") if "cache" in fields else True,
        )

    def timeout(self, node: yaml.Node, where: str) -> float:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (
            "tag:yaml.org,2002:int",
            "tag:yaml.org,2002:float",
        ):
            raise self.fail(node, where, f"must be a number of seconds, not {_kind(node)}")
        value = _construct(node)
        assert isinstance(value, int | float)
        if not 0 < value <= MAX_TIMEOUT:
            raise self.fail(node, where, f"must be more than 0 and at most {MAX_TIMEOUT:g} seconds, not {value:g}")
        return value

    def when(self, node: yaml.Node, where: str) -> When:
        fields = self.mapping(node, where, ("status", "branch"))
        status: Status = "success"
        if "status" in fields:
            chosen = set(self.choices(fields["status"], f"{where}.status", STATUSES))
            if "always" in chosen or chosen == {"success", "failure"}:
                status = "always"
            elif chosen == {"failure"}:
                status = "failure"
        branch = tuple(self.texts(fields["branch"], f"{where}.branch")) if "branch" in fields else ()
        return When(status=status, branch=branch)

    def matrix(self, node: yaml.Node, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        axes = []
        for key_node, values_node in self.pairs(node, where):
            var = self.key(key_node, where)
            if not _VAR.fullmatch(var):
                raise self.fail(key_node, f"{where}.{var}", "not a variable name (letters, digits, _)")
            items = self.sequence(values_node, f"{where}.{var}")
            if not items:
                raise self.fail(values_node, f"{where}.{var}", "needs at least one value")
            values = tuple(dict.fromkeys(self.scalar_text(v, f"{where}.{var}[{i}]") for i, v in enumerate(items)))
            axes.append((var, values))
        if not axes:
            raise self.fail(node, where, "needs at least one variable")
        size = 1
        for _, values in axes:
            size *= len(values)
        if size > MAX_MATRIX:
            raise self.fail(node, where, f"makes {size} combinations; at most {MAX_MATRIX}")
        return tuple(axes)

    def requires(self, node: yaml.Node, where: str) -> tuple[tuple[str, str], ...]:
        labels = []
        for key_node, value in self.pairs(node, where):
            key = self.key(key_node, where)
            if not _LABEL.fullmatch(key):
                raise self.fail(key_node, f"{where}.{key}", "not a label name (letters, digits, _ . -)")
            labels.append((key, self.scalar_text(value, f"{where}.{key}")))
        return tuple(labels)

    def notify(self, node: yaml.Node, where: str) -> Notify:
        fields = self.mapping(node, where, ("webhook", "email", "on"))
        if ("webhook" in fields) == ("email" in fields):
            raise self.fail(node, where, "give exactly one of 'webhook' (a URL) and 'email' (an address)")
        on = self.choices(fields["on"], f"{where}.on", NOTIFY_ON) if "on" in fields else ("failure", "fixed")
        if "webhook" in fields:
            url = self.text(fields["webhook"], f"{where}.webhook")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise self.fail(fields["webhook"], f"{where}.webhook", f"{url!r} is not an http(s) URL")
            return Notify(on=on, webhook=url)
        email = self.text(fields["email"], f"{where}.email")
        if not _EMAIL.fullmatch(email):
            raise self.fail(fields["email"], f"{where}.email", f"{email!r} is not an email address")
        return Notify(on=on, email=email)

    # -- across steps ---------------------------------------------------------------------

    def check_graph(self, steps: list[Step], nodes: list[yaml.Node]) -> None:
        """Names unique, ``depends_on`` naming known other steps, no cycle, reactions after something."""
        index: dict[str, int] = {}
        for i, step in enumerate(steps):
            if step.name in index:
                first = steps[index[step.name]].line
                raise self.fail(
                    nodes[i], f"steps[{i}].name", f"{step.name!r} is the name of the step at line {first} too"
                )
            index[step.name] = i
        ordered = not any(step.depends_on for step in steps)
        for i, step in enumerate(steps):
            for j, dep in enumerate(step.depends_on):
                dep_node = _dep_node(nodes[i], j)
                if dep not in index:
                    raise self.fail(dep_node, f"steps[{i}].depends_on", f"unknown step {dep!r}")
                if dep == step.name:
                    raise self.fail(dep_node, f"steps[{i}].depends_on", "a step cannot depend on itself")
            if step.when.status == "failure" and not step.depends_on and (i == 0 or not ordered):
                message = "a failure reaction needs a step before it (depends_on)"
                raise self.fail(nodes[i], f"steps[{i}].when", message)
        cycle = find_cycle({step.name: step.depends_on for step in steps})
        if cycle:
            i = index[cycle[0]]
            j = steps[i].depends_on.index(cycle[1])
            raise self.fail(_dep_node(nodes[i], j), f"steps[{i}].depends_on", f"a cycle: {' -> '.join(cycle)}")


def _dep_node(step_node: yaml.Node, j: int) -> yaml.Node:
    """The node of the ``j``-th entry of a step's ``depends_on`` (for its line)."""
    assert isinstance(step_node, yaml.MappingNode)
    for key, value in step_node.value:
        if key.value == "depends_on" and isinstance(value, yaml.SequenceNode):
            return value.value[j]  # type: ignore[no-any-return]
    return step_node


def _relative(path: str) -> Callable[[], str]:
    return lambda: check_relative(path, "output path")


def _construct(node: yaml.ScalarNode) -> object:
    """A scalar's value as the safe loader reads it (bool, int, float)."""
    return yaml.SafeLoader("").construct_object(node)


def _kind(node: yaml.Node) -> str:
    """What a node is, in words for an error."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = node.tag.rsplit(":", 1)[-1]
    words = {"str": "a string", "int": "a number", "float": "a number", "bool": "a boolean", "null": "empty (null)"}
    return f"{words.get(kind, kind)} ({node.value!r})" if kind != "null" else "empty (null)"
