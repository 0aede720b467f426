"""TF Serving's ``models.config`` (a text ``ModelServerConfig``): :func:`write_models_config`,
:func:`update_models_config` and :func:`read_models_config`, one :class:`ServedModel` per entry.

Every entry is validated before anything is written (name, absolute or URI base path, version
policy, labels and, unless told not to, the versions on disk); a label move TF Serving would
refuse at the reload is refused here; the file is replaced atomically, so a server polling it
(``--model_config_file_poll_wait_seconds``) never reads half of it. :data:`NAME_RE` and
:data:`LABEL_RE` are also what the clients check model names and labels against.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kerasft.errors import KerasftError, expected, one_line
from kerasft.io import atomic_write

Policy = Literal["latest", "specific", "all"]
_POLICIES = ("latest", "specific", "all")
#: A model name: the REST path ``/v1/models/NAME`` and the ``name`` of a config entry.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: A version label (``stable``, ``canary``): the REST path ``/labels/LABEL``.
LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# A URI scheme as TensorFlow's io::ParseURI reads one (``gs://``, ``s3://``, ``hdfs://``).
_URI_RE = re.compile(r"^[A-Za-z][0-9A-Za-z.]*://")
#: The flag TF Serving needs to start with labels in its models.config (server_core.cc checks
#: labels against the loaded versions before it loads any).
LABELS_FLAG = "--allow_version_labels_for_unavailable_models=true"


@dataclass(frozen=True)
class ServedModel:
    """One ``config { ... }`` entry of a TF Serving ``models.config``.

    ``base_path`` is written as given: it is the path the server sees. When the server sees the
    models elsewhere (a Docker mount, a bucket), set ``local_base_path`` to the same folder as seen
    here: the version checks read it; it is not written to the config.
    """

    name: str
    base_path: str
    policy: Policy = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: Mapping[str, int] = field(default_factory=dict)
    local_base_path: str | None = None


def _validate_served_model(model: ServedModel, check_versions: bool, where: str) -> None:
    if not isinstance(model.name, str) or not NAME_RE.match(model.name):
        raise KerasftError(
            expected("a model name of letters, digits, '.', '_' or '-'", "name", model.name, where)
        )
    where = f"{where} (model {model.name!r})"
    if not isinstance(model.base_path, str) or not model.base_path:
        raise KerasftError(expected("a non-empty path", "base_path", model.base_path, where))
    # server_core.cc ValidateModelConfigList refuses the whole config for one relative path.
    if not model.base_path.startswith("/") and not _URI_RE.match(model.base_path):
        raise KerasftError(
            expected(
                "an absolute path or a URI as the server sees it (TF Serving refuses relative "
                "base paths), e.g. /models/NAME",
                "base_path",
                model.base_path,
                where,
            )
        )
    if model.policy not in _POLICIES:
        raise KerasftError(expected(f"one of {list(_POLICIES)}", "policy", model.policy, where))
    if model.policy == "latest":
        if (
            isinstance(model.num_versions, bool)
            or not isinstance(model.num_versions, int)
            or (model.num_versions < 1)
        ):
            raise KerasftError(
                expected("an integer >= 1", "num_versions", model.num_versions, where)
            )
    elif model.num_versions != 1:
        raise KerasftError(
            expected(
                "num_versions only with policy='latest'", "num_versions", model.num_versions, where
            )
        )
    versions = list(model.versions)
    if model.policy == "specific":
        if (
            not versions
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in versions)
            or len(set(versions)) != len(versions)
        ):
            raise KerasftError(
                expected(
                    "a non-empty list of distinct integer versions >= 0 with policy='specific'",
                    "versions",
                    versions,
                    where,
                )
            )
    elif versions:
        raise KerasftError(
            expected("versions only with policy='specific'", "versions", versions, where)
        )
    for label, version in dict(model.labels).items():
        if not isinstance(label, str) or not LABEL_RE.match(label):
            raise KerasftError(
                expected(
                    "a label name starting with a letter (e.g. 'stable')", "label", label, where
                )
            )
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise KerasftError(
                expected("an integer version >= 0", f"labels[{label!r}]", version, where)
            )
    if check_versions:
        _check_versions_on_disk(model, where)


def _check_versions_on_disk(model: ServedModel, where: str) -> None:
    folder = model.local_base_path or model.base_path
    if "://" in folder:
        raise KerasftError(
            expected(
                "a local folder to check versions in: set local_base_path, or check_versions=False",
                "base_path",
                folder,
                where,
            )
        )
    root = Path(folder)
    if not root.is_dir():
        key = "local_base_path" if model.local_base_path else "base_path"
        raise KerasftError(
            expected(
                "an existing folder of integer version folders (set local_base_path when the "
                "server sees it under another path)",
                key,
                folder,
                where,
            )
        )
    on_disk = sorted(
        int(p.name)
        for p in root.iterdir()
        if p.is_dir()
        and p.name.isdigit()
        and ((p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file())
    )
    if model.policy == "specific":
        missing = sorted(set(model.versions) - set(on_disk))
        if missing:
            raise KerasftError(
                expected(
                    f"versions that exist as SavedModel folders under {folder} (found {on_disk})",
                    "versions",
                    missing,
                    where,
                )
            )
        served = set(model.versions)
    elif model.policy == "latest":
        served = set(on_disk[-model.num_versions :])
    else:
        served = set(on_disk)
    for label, version in dict(model.labels).items():
        if version not in on_disk:
            raise KerasftError(
                expected(
                    f"a version that exists as a SavedModel folder under {folder} "
                    f"(found {on_disk})",
                    f"labels[{label!r}]",
                    version,
                    where,
                )
            )
        if version not in served:
            raise KerasftError(
                expected(
                    f"a version the policy serves ({sorted(served)}; TF Serving refuses labels "
                    "on versions it does not load: use policy='specific')",
                    f"labels[{label!r}]",
                    version,
                    where,
                )
            )


def _served_by_entry(entry: Any, local_base_path: str | None) -> set[int] | None:
    """The versions an existing models.config entry makes the server load (None: unknown)."""
    policy = entry.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "specific":
        return set(policy.specific.versions)
    folder = local_base_path or entry.base_path
    if "://" in folder or not Path(folder).is_dir():
        return None
    on_disk = sorted(
        int(p.name)
        for p in Path(folder).iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
    )
    if which == "all":
        return set(on_disk)
    keep = max(policy.latest.num_versions, 1) if which == "latest" else 1
    return set(on_disk[-keep:])


def _check_label_moves(entry: Any, model: ServedModel, where: str) -> None:
    """Refuses to move a label onto a version the current config does not serve yet.

    TF Serving (server_core.cc UpdateModelVersionLabelMap) checks labels against the versions
    loaded before the new config's versions load, and never lets an existing label move to a
    version that is not available, whatever its flags: such a config is refused at the reload.
    """
    served = _served_by_entry(entry, model.local_base_path)
    for label, version in dict(model.labels).items():
        old = entry.version_labels.get(label)
        if old is None or old == version or (served is not None and version in served):
            continue
        keep = sorted((served or set()) | {version})
        raise KerasftError(
            expected(
                f"label {label!r} to move only to a version the server already serves (TF "
                "Serving refuses to move a label onto a version that is still loading). Two "
                f"steps: serve version {version} first with the label unchanged (--policy "
                f"specific --versions {','.join(map(str, keep))} --label {label}={old}), wait "
                f"until GET /v1/models/{model.name}/versions/{version} says AVAILABLE, then "
                f"move the label (--label {label}={version})",
                f"labels[{label!r}]",
                version,
                f"{where} (model {model.name!r}: {label}={old} now, served "
                f"{sorted(served) if served is not None else 'unknown'})",
            )
        )


def _model_config_proto(model: ServedModel) -> Any:
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelConfig(
        name=model.name, base_path=model.base_path, model_platform="tensorflow"
    )
    policy = config.model_version_policy
    if model.policy == "latest":
        policy.latest.num_versions = model.num_versions
    elif model.policy == "specific":
        policy.specific.versions.extend(model.versions)
    else:
        policy.all.SetInParent()
    for label, version in dict(model.labels).items():
        config.version_labels[label] = version
    return config


def _as_served_model(item: ServedModel | Mapping[str, Any], where: str) -> ServedModel:
    if isinstance(item, ServedModel):
        return item
    if isinstance(item, Mapping):
        try:
            data = dict(item)
            if "versions" in data:
                data["versions"] = tuple(data["versions"])
            return ServedModel(**data)
        except TypeError as err:
            raise KerasftError(
                expected(
                    "ServedModel fields (name, base_path, policy, num_versions, versions, "
                    "labels, local_base_path)",
                    "model",
                    sorted(item),
                    where,
                )
            ) from err
    raise KerasftError(expected("a ServedModel or a dict", "model", type(item).__name__, where))


def _parse_models_config(path: Path, where: str) -> Any:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except text_format.ParseError as err:
        raise KerasftError(
            expected("a text ModelServerConfig", "error", one_line(err), f"{where} {path}")
        ) from err
    if config.HasField("custom_model_config"):
        raise KerasftError(
            expected(
                "a model_config_list config", "config", "custom_model_config", f"{where} {path}"
            )
        )
    return config


def write_models_config(
    path: str | os.PathLike[str],
    models: Sequence[ServedModel | Mapping[str, Any]],
    *,
    check_versions: bool = True,
) -> Path:
    """Writes a TF Serving ``models.config`` (text ``ModelServerConfig``) holding ``models``.

    Each model is validated (name, absolute or URI base path, policy, versions; with
    ``check_versions``, that the policy's and the labels' versions exist as integer SavedModel
    folders under the base path, and that labels only name versions the policy loads). When the
    file exists, a label of a model it holds may only move to a version that file already serves
    (TF Serving refuses the move otherwise; do it in two steps). The file is replaced atomically
    (temporary file + ``os.replace``), so a server polling it
    (``--model_config_file_poll_wait_seconds``) never reads half of it.
    """
    where = "write_models_config"
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    served = [_as_served_model(m, where) for m in models]
    if not served:
        raise KerasftError(expected("at least one model", "models", [], where))
    names = [m.name for m in served]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise KerasftError(expected("distinct model names", "duplicates", duplicates, where))
    target = Path(path)
    # The file a server already polls: labels may not move onto versions it does not serve yet.
    current = (
        {e.name: e for e in _parse_models_config(target, where).model_config_list.config}
        if target.is_file()
        else {}
    )
    config = model_server_config_pb2.ModelServerConfig()
    for model in served:
        _validate_served_model(model, check_versions, where)
        if model.name in current:
            _check_label_moves(current[model.name], model, where)
        config.model_config_list.config.append(_model_config_proto(model))
    atomic_write(target, text_format.MessageToString(config))
    return target


def update_models_config(
    path: str | os.PathLike[str],
    name: str,
    base_path: str,
    policy: Policy = "latest",
    num_versions: int = 1,
    versions: Sequence[int] = (),
    labels: Mapping[str, int] | None = None,
    *,
    local_base_path: str | None = None,
    check_versions: bool = True,
) -> Path:
    """Adds or replaces the entry for model ``name`` in ``models.config`` (created if missing).

    Entries of other models are kept as they are (fields this module does not write included).
    Example of a canary: ``policy="specific", versions=[1, 2], labels={"stable": 1, "canary": 2}``.
    The new entry is validated as in :func:`write_models_config`; the file is replaced atomically.
    """
    where = "update_models_config"
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    model = ServedModel(
        name=name,
        base_path=base_path,
        policy=policy,
        num_versions=num_versions,
        versions=tuple(versions),
        labels=dict(labels or {}),
        local_base_path=local_base_path,
    )
    _validate_served_model(model, check_versions, where)
    target = Path(path)
    if target.exists():
        config = _parse_models_config(target, where)
    else:
        config = model_server_config_pb2.ModelServerConfig()
    entries = config.model_config_list.config
    for entry in entries:
        if entry.name == name:
            _check_label_moves(entry, model, where)
    new_entry = _model_config_proto(model)
    for index, entry in enumerate(entries):
        if entry.name == name:
            entries[index].CopyFrom(new_entry)
            break
    else:
        entries.append(new_entry)
    atomic_write(target, text_format.MessageToString(config))
    return target


def read_models_config(path: str | os.PathLike[str]) -> list[ServedModel]:
    """Reads ``models.config`` into :class:`ServedModel` entries (for inspection and tests)."""
    target = Path(path)
    if not target.is_file():
        raise KerasftError(
            expected("an existing models.config", "path", str(target), "read_models_config")
        )
    config = _parse_models_config(target, "read_models_config")
    out = []
    for entry in config.model_config_list.config:
        which = entry.model_version_policy.WhichOneof("policy_choice")
        policy = which or "latest"
        num_versions = 1
        versions: tuple[int, ...] = ()
        if which == "latest":
            num_versions = entry.model_version_policy.latest.num_versions or 1
        elif which == "specific":
            versions = tuple(entry.model_version_policy.specific.versions)
        out.append(
            ServedModel(
                name=entry.name,
                base_path=entry.base_path,
                policy=policy,  # type: ignore[arg-type]
                num_versions=num_versions,
                versions=versions,
                labels=dict(entry.version_labels),
            )
        )
    return out
