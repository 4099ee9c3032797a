"""Load a YAML config file into ``AppConfig``, reporting every problem in one pass.

The YAML is composed into a node tree (so each value keeps its line) and walked along the
dataclasses of ``daemon.config.model``: a YAML key is a dataclass field name, the field's type
hint decides how its value is read, ``rules.RULES`` adds ranges and patterns. A new field in
model.py is therefore accepted, type-checked and named in errors without touching this file.

Rules that are not obvious from the types:
- bool is not an int, an int is a valid float, a string is never a number;
- the file is a regular file of at most ``MAX_CONFIG_BYTES`` (a device or a FIFO is refused
  before it is read) with at most ``rules.MAX_CAMERAS`` cameras;
- relative paths resolve against the folder of the config file (``~`` expands, as do
  ``${NAME}`` and ``${NAME:-default}`` from the environment);
- mqtt.tls files must load as the broker connection will load them (PEM, matching pair);
- files that must exist: model.path, model.drift.reference_model, mqtt.tls files,
  mqtt.password_file and video-file camera URLs (``/dev/videoN`` devices are not checked);
- at least one camera must be enabled;
- top-level keys starting with ``x-`` are ignored, so they can hold YAML anchors
  (``x-camera-defaults: &cam {...}`` then ``<<: *cam`` in each camera);
- mqtt.password comes from exactly one of ``password`` (inline), ``password_file`` (the
  file's content, stripped) or ``password_env`` (an environment variable's value);
- no error message contains a password or a camera URL.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import stat
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final, Union, get_args, get_origin, get_type_hints

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from daemon.config.errors import BadValue, ConfigError, ConfigProblem, ConfigWarning
from daemon.config.external import (
    check_camera_url,
    read_password_env,
    read_password_file,
    require_file,
    resolve_path,
    tls_problems,
)
from daemon.config.model import (
    AppConfig,
    CameraConfig,
    DriftConfig,
    ModelConfig,
    MqttConfig,
    TlsConfig,
)
from daemon.config.permissions import secret_permission_warnings
from daemon.config.reload import CameraDiff, diff_cameras
from daemon.config.rules import MAX_CAMERAS, RULES, Rule, class_problems
from daemon.config.secrets import Secret, has_credentials, mask_url
from daemon.config.tracking import tracking_problems
from daemon.config.yamltree import ScalarReader, compose, describe, is_null, line_of

# The config entry points in one import for the daemon and the commands.
__all__ = [
    "CameraDiff",
    "ConfigError",
    "ConfigProblem",
    "ConfigWarning",
    "LoadResult",
    "diff_cameras",
    "load_config",
    "load_config_with_warnings",
]

log = logging.getLogger(__name__)

# A full config of MAX_CAMERAS cameras is well below 200 kB; reading is bounded so that a
# device such as /dev/zero or a runaway generated file cannot exhaust memory.
MAX_CONFIG_BYTES: Final = 1 << 20
# Fields filled by the loader, not by the operator.
_NOT_FROM_YAML: Final = frozenset({(AppConfig, "source")})
# Path fields whose files must exist when the config is loaded.
_MUST_EXIST: Final = frozenset(
    {
        (ModelConfig, "path"),
        (DriftConfig, "reference_model"),
        (TlsConfig, "ca_file"),
        (TlsConfig, "cert_file"),
        (TlsConfig, "key_file"),
    }
)
# Top-level keys ignored by the loader: a place for YAML anchors (as in docker compose).
_EXTENSION_PREFIX: Final = "x-"
# mqtt.password may come from any one of these keys.
_PASSWORD_SOURCES: Final = ("password", "password_file", "password_env")
_TYPE_WORDS: Final[dict[Any, str]] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    Path: "a path",
    Secret: "a string",
}
# Type tests of plain scalars; YAML 1.1 typing has already turned `yes` into a bool.
_IS_TYPE: Final[dict[Any, Callable[[Any], bool]]] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


class _Invalid:
    """Marks a value that produced a problem, so checks built on it are skipped."""


_INVALID: Final = _Invalid()


@dataclass(frozen=True)
class LoadResult:
    config: AppConfig
    warnings: tuple[ConfigWarning, ...]


def load_config(path: Path, env: Mapping[str, str] | None = None) -> AppConfig:
    """Read and validate ``path``; raise ``ConfigError`` listing every problem.

    Warnings (secrets in a file other users can read) are logged, not raised.
    ``env`` replaces ``os.environ`` for ``mqtt.password_env``.
    """
    result = load_config_with_warnings(path, env)
    for warning in result.warnings:
        log.warning(warning.message, extra={"file": warning.file, "hint": warning.hint})
    return result.config


def load_config_with_warnings(path: Path, env: Mapping[str, str] | None = None) -> LoadResult:
    """Like ``load_config`` but returns the warnings instead of logging them."""
    file = str(path)
    text = _read_config_text(path, file)
    root = compose(text, file)
    if root is None:
        message = "the file is empty; expected a mapping with 'cameras' and 'model'"
        raise ConfigError([ConfigProblem(file, message)])
    loader = _Loader(file, path.absolute().parent, os.environ if env is None else env)
    config = loader.build(AppConfig, root, "")
    if loader.problems or not isinstance(config, AppConfig):
        raise ConfigError(sorted(loader.problems, key=lambda p: (p.line or 0, p.column or 0)))
    config = dataclasses.replace(config, source=path.absolute())
    warnings = secret_permission_warnings(path, loader.secret_keys, loader.secret_files)
    return LoadResult(config, tuple(warnings))


def _read_config_text(path: Path, file: str) -> str:
    """The file's text: a regular file of at most ``MAX_CONFIG_BYTES`` in UTF-8."""
    try:
        # Non-blocking: opening a FIFO would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise ConfigError([ConfigProblem(file, "not a regular file")])
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigProblem(file, f"cannot read config file: {reason}")]) from None
    if len(data) > MAX_CONFIG_BYTES:
        message = (
            f"larger than {MAX_CONFIG_BYTES} bytes; a config of {MAX_CAMERAS} cameras is far less"
        )
        raise ConfigError([ConfigProblem(file, message)])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (byte offset {exc.start})"
        raise ConfigError([ConfigProblem(file, message)]) from None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Enum)


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); other types -> (type, False)."""
    if _is_union(tp):
        args = tuple(a for a in get_args(tp) if a is not type(None))
        if len(args) < len(get_args(tp)):
            return (args[0] if len(args) == 1 else Union[args]), True  # noqa: UP007
    return tp, False


def _expected(tp: Any) -> str:
    """Default wording of what a type accepts, for fields without a rule."""
    if _is_enum(tp):
        return "one of " + ", ".join(str(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping of settings"
    if get_origin(tp) is tuple:
        return "a list"
    if _is_union(tp):
        return " or ".join(_expected(a) for a in get_args(tp))
    return _TYPE_WORDS.get(tp, "a string")


def _show_list(items: tuple[Any, ...]) -> str:
    return "[" + ", ".join(repr(i) for i in items) + "]"


class _Loader:
    """One validation pass over a node tree; collects problems instead of stopping."""

    def __init__(self, file: str, base_dir: Path, env: Mapping[str, str]) -> None:
        self.file = file
        self.base_dir = base_dir
        self.env = env
        self.problems: list[ConfigProblem] = []
        # Keys whose values are secrets written in the file itself.
        self.secret_keys: list[str] = []
        self.secret_files: list[Path] = []
        self._scalars = ScalarReader()
        # Value node id -> its key node: a missing key is reported on its parent key's line.
        self._key_nodes: dict[int, Node] = {}

    def problem(self, node: Node, key: str, message: str) -> _Invalid:
        self.problems.append(ConfigProblem(self.file, message, line=line_of(node), key=key or None))
        return _INVALID

    # -- mappings -> dataclasses ---------------------------------------------------------------

    def build(self, cls: type, node: Node, prefix: str) -> Any:
        """Build dataclass ``cls`` from a mapping node, or return ``_INVALID``."""
        if not isinstance(node, MappingNode):
            got = self._describe(node)
            return self.problem(node, prefix or "top level", f"expected a mapping, got {got}")
        pairs = self._pairs(node, prefix)
        fields = {
            f.name: f
            for f in dataclasses.fields(cls)
            if f.init and (cls, f.name) not in _NOT_FROM_YAML
        }
        extra = _PASSWORD_SOURCES if cls is MqttConfig else ()
        for name, (key_node, _) in pairs.items():
            if cls is AppConfig and name.startswith(_EXTENSION_PREFIX):
                continue
            if name not in fields and name not in extra:
                self._unknown_key(key_node, _join(prefix, name), name, [*fields, *extra])
        kwargs, valid = self._field_values(cls, fields, pairs, node, prefix)
        if cls is AppConfig and "cameras" in pairs and not _too_many_cameras(pairs):
            key_node, value_node = pairs["cameras"]
            cameras = self._check_cameras(key_node, value_node, kwargs.get("cameras"))
            valid = valid and cameras is not _INVALID
        if not valid:
            return _INVALID
        obj = cls(**kwargs)
        cross = class_problems(obj) + tracking_problems(obj)
        if isinstance(obj, TlsConfig) and not cross:
            cross = tls_problems(obj.ca_file, obj.cert_file, obj.key_file)
        for name, message in cross:
            at = pairs[name][1] if name in pairs else self._key_nodes.get(id(node), node)
            self.problem(at, _join(prefix, name), message)
        return _INVALID if cross else obj

    def _field_values(
        self,
        cls: type,
        fields: dict[str, dataclasses.Field[Any]],
        pairs: dict[str, tuple[Node, Node]],
        node: MappingNode,
        prefix: str,
    ) -> tuple[dict[str, Any], bool]:
        """Constructor arguments of ``cls`` that are valid, and whether all of them are."""
        hints = get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        valid = True
        for name, f in fields.items():
            key = _join(prefix, name)
            if cls is MqttConfig and name == "password":
                value = self._mqtt_password(pairs, prefix)
            elif cls is AppConfig and name == "cameras" and _too_many_cameras(pairs):
                count = len(pairs[name][1].value)
                message = (
                    f"{count} cameras; at most {MAX_CAMERAS} per daemon "
                    "(each camera is its own reader process)"
                )
                value = self.problem(pairs[name][0], key, message)
            elif name in pairs:
                value = self._field(cls, name, hints[name], pairs[name][1], key)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                parent = self._key_nodes.get(id(node), node)
                value = self.problem(parent, key, "required key is missing")
            else:
                continue
            if value is _INVALID:
                valid = False
            else:
                kwargs[name] = value
        return kwargs, valid

    def _pairs(self, node: MappingNode, prefix: str) -> dict[str, tuple[Node, Node]]:
        """Key name -> (key node, value node); reports merge errors and duplicate keys.

        Keys written in the mapping override keys merged in with ``<<``, as in PyYAML.
        """
        own = {id(key_node) for key_node, _ in node.value}
        try:
            self._scalars.flatten(node)
        except ValueError as exc:
            self.problem(node, prefix, f"invalid merge key: {exc}")
        pairs: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value) if isinstance(key_node, ScalarNode) else "<complex key>"
            if name in pairs and id(pairs[name][0]) in own and id(key_node) in own:
                message = f"duplicate key (first at line {line_of(pairs[name][0])})"
                self.problem(key_node, _join(prefix, name), message)
                continue
            pairs[name] = (key_node, value_node)
            self._key_nodes[id(value_node)] = key_node
        return pairs

    def _unknown_key(self, node: Node, key: str, name: str, valid: list[str]) -> None:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"
        self.problem(node, key, f"unknown key{hint}")

    def _field(self, cls: type, name: str, tp: Any, node: Node, key: str) -> Any:
        inner, optional = _optional_inner(tp)
        if optional and is_null(node):
            return None
        rule = RULES.get((cls, name))
        expected = rule.expected if rule else _expected(inner)
        value = self._convert(node, inner, key, expected)
        if value is _INVALID:
            return value
        if rule is not None and not _passes(rule, value):
            got = _show_list(value) if isinstance(value, tuple) else self._describe(node)
            return self.problem(node, key, f"expected {expected}, got {got}")
        try:
            return self._outside_checks(cls, name, value, key)
        except BadValue as exc:
            return self.problem(node, key, str(exc))

    def _outside_checks(self, cls: type, name: str, value: Any, key: str) -> Any:
        """Checks against the file system; raises ``BadValue``."""
        if (cls, name) in _MUST_EXIST:
            return require_file(value)
        if cls is CameraConfig and name == "url":
            checked = check_camera_url(value.reveal(), self.base_dir, self.env)
            if has_credentials(checked):
                self.secret_keys.append(key)
            return Secret(checked)
        return value

    # -- values ------------------------------------------------------------------------------

    def _convert(self, node: Node, tp: Any, key: str, expected: str) -> Any:
        """Read ``node`` as type ``tp``; ``expected`` phrases a mismatch."""
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.build(tp, node, key)
        if get_origin(tp) is tuple:
            return self._tuple(node, tp, key, expected)
        secret = tp is Secret
        value = self._scalar_value(node)
        if not isinstance(value, _Invalid):
            options = get_args(tp) if _is_union(tp) else (tp,)
            for option in options:
                try:
                    converted = self._typed(value, option)
                except BadValue as exc:
                    return self.problem(node, key, str(exc))
                if not isinstance(converted, _Invalid):
                    return converted
        got = self._describe(node, secret=secret)
        return self.problem(node, key, f"expected {expected}, got {got}{_hint(node, value, tp)}")

    def _scalar_value(self, node: Node) -> Any:
        """A non-null scalar's value, else ``_INVALID`` (without reporting)."""
        if not isinstance(node, ScalarNode) or is_null(node):
            return _INVALID
        try:
            return self._scalars.value(node)
        except ValueError:
            return _INVALID

    def _typed(self, value: Any, tp: Any) -> Any:
        """``value`` as ``tp``, or ``_INVALID``."""
        if tp in _IS_TYPE:
            if not _IS_TYPE[tp](value):
                return _INVALID
            return float(value) if tp is float else value
        if not isinstance(value, str) or not value.strip():
            return _INVALID
        if _is_enum(tp):
            return tp(value) if value in {m.value for m in tp} else _INVALID
        if tp is Path:
            return resolve_path(value, self.base_dir, self.env)
        return Secret(value) if tp is Secret else _INVALID

    def _tuple(self, node: Node, tp: Any, key: str, expected: str) -> Any:
        if not isinstance(node, SequenceNode):
            return self.problem(node, key, f"expected {expected}, got {self._describe(node)}")
        args = get_args(tp)
        item_types = [args[0]] * len(node.value) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(node.value):
            count = len(node.value)
            return self.problem(node, key, f"expected {expected}, got a list of {count} items")
        items = [
            self._convert(item, item_tp, f"{key}[{i}]", _expected(item_tp))
            for i, (item, item_tp) in enumerate(zip(node.value, item_types, strict=True))
        ]
        return _INVALID if any(i is _INVALID for i in items) else tuple(items)

    def _describe(self, node: Node, *, secret: bool = False) -> str:
        value = self._scalar_value(node)
        if isinstance(node, ScalarNode) and isinstance(value, _Invalid) and not is_null(node):
            return f"a value tagged {node.tag}" if node.tag.startswith("!") else "a bad value"
        return describe(node, value, secret=secret)

    # -- cross-item checks and secrets ---------------------------------------------------------

    def _check_cameras(
        self, key_node: Node, node: Node, cameras: tuple[CameraConfig, ...] | None
    ) -> Any:
        """Duplicate ids (reported even when another camera has errors), at least one enabled."""
        if not isinstance(node, SequenceNode):
            return _INVALID
        result: Any = cameras
        first_line: dict[str, int] = {}
        for index, item in enumerate(node.value):
            ids = [v for k, v in getattr(item, "value", ()) if getattr(k, "value", None) == "id"]
            if not ids or not isinstance(ids[0], ScalarNode):
                continue
            cid = mask_url(str(ids[0].value))
            if cid in first_line:
                message = f"duplicate camera id '{cid}' (first at line {first_line[cid]})"
                result = self.problem(ids[0], f"cameras[{index}].id", message)
            else:
                first_line[cid] = line_of(ids[0])
        if cameras is not None and not cameras:
            message = "no cameras configured; at least one is required"
            return self.problem(key_node, "cameras", message)
        if cameras and result is not _INVALID and not any(c.enabled for c in cameras):
            return self.problem(key_node, "cameras", "no camera is enabled; enable at least one")
        return result

    def _mqtt_password(self, pairs: dict[str, tuple[Node, Node]], prefix: str) -> Any:
        given = [n for n in _PASSWORD_SOURCES if n in pairs and not is_null(pairs[n][1])]
        if not given:
            return None
        if len(given) > 1:
            also = f"give only one of {', '.join(_PASSWORD_SOURCES)} (also set: {given[0]})"
            return self.problem(pairs[given[1]][0], _join(prefix, given[1]), also)
        source = given[0]
        return self._password_from(source, pairs[source][1], _join(prefix, source))

    def _password_from(self, source: str, node: Node, key: str) -> Any:
        if source == "password":
            secret = self._convert(node, Secret, key, "a non-empty string")
            if not isinstance(secret, _Invalid):
                self.secret_keys.append(key)
            return secret
        wanted = Path if source == "password_file" else str
        value = self._convert(node, wanted, key, _expected(wanted))
        if isinstance(value, _Invalid):
            return value
        try:
            if isinstance(value, Path):
                secret = Secret(read_password_file(value))
                self.secret_files.append(value)
                return secret
            return Secret(read_password_env(value, self.env))
        except BadValue as exc:
            return self.problem(node, key, str(exc))


def _too_many_cameras(pairs: dict[str, tuple[Node, Node]]) -> bool:
    node = pairs.get("cameras", (None, None))[1]
    return isinstance(node, SequenceNode) and len(node.value) > MAX_CAMERAS


def _passes(rule: Rule, value: Any) -> bool:
    try:
        return bool(rule.ok(value))
    except (TypeError, ValueError):
        return False


def _hint(node: Node, value: Any, tp: Any) -> str:
    """A nudge for the two usual mistakes: an unquoted number or boolean, a misspelt choice."""
    if tp in (str, Path) and isinstance(node, ScalarNode) and not isinstance(value, str | _Invalid):
        return f"; quote it if you meant the text '{node.value}'"
    if _is_enum(tp) and isinstance(value, str):
        close = difflib.get_close_matches(value, [str(m.value) for m in tp], n=1)
        return f" (did you mean '{close[0]}'?)" if close else ""
    return ""
