"""TF Serving's REST API with the standard library only: :func:`predict_rest` and
:func:`get_model_status_rest`, one-line errors, and retries of the answers worth asking again
(:data:`RETRY_STATUSES` and connection failures, with exponential backoff).
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasft.errors import KerasftError, expected, one_line
from kerasft.serving.models_config import LABEL_RE, NAME_RE

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: Answers worth asking again: 503 (UNAVAILABLE: the server is starting or shedding load) and
#: 429 (RESOURCE_EXHAUSTED: the batch queue is full), as TF Serving's http_server.cc maps them.
#: 504 is TF Serving's own deadline (--rest_api_timeout_in_ms): a retry would wait as long again.
RETRY_STATUSES = frozenset({429, 503})


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _model_url(
    server_url: str, model: str, version: int | None, label: str | None, where: str
) -> str:
    if not isinstance(server_url, str) or not server_url:
        raise KerasftError(
            expected("a server URL like http://host:8501", "server_url", server_url, where)
        )
    base = server_url if "://" in server_url else f"http://{server_url}"
    parsed = urllib.parse.urlsplit(base)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise KerasftError(
            expected("an http(s) URL like http://host:8501", "server_url", server_url, where)
        )
    if not isinstance(model, str) or not NAME_RE.match(model):
        raise KerasftError(
            expected("a model name of letters, digits, '.', '_' or '-'", "model", model, where)
        )
    if version is not None and label is not None:
        raise KerasftError(expected("either version or label, not both", "label", label, where))
    url = f"{base.rstrip('/')}/v1/models/{model}"
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise KerasftError(expected("an integer version >= 0", "version", version, where))
        url += f"/versions/{version}"
    elif label is not None:
        if not isinstance(label, str) or not LABEL_RE.match(label):
            raise KerasftError(expected("a version label like 'stable'", "label", label, where))
        url += f"/labels/{urllib.parse.quote(label)}"
    return url


def _opener(url: str) -> urllib.request.OpenerDirector:
    # Environment proxies apply to remote servers; a loopback server is never reached through one.
    if urllib.parse.urlsplit(url).hostname in _LOOPBACK_HOSTS:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _http_json(
    method: str,
    url: str,
    body: bytes | None,
    timeout: float,
    retries: int,
    backoff: float,
    where: str,
) -> dict[str, Any]:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise KerasftError(expected("a timeout in seconds > 0", "timeout", timeout, where))
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise KerasftError(expected("an integer >= 0", "retries", retries, where))
    where = f"{where} {method} {url}"
    opener = _opener(url)
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    attempts = retries + 1
    for attempt in range(attempts):
        last = attempt == attempts - 1
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with opener.open(request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            detail = _error_detail(err)
            retried = err.code in RETRY_STATUSES
            if retried and not last:
                time.sleep(backoff * 2**attempt)
                continue
            tries = f" after {attempts} attempts" if retried and attempts > 1 else ""
            if err.code == 504:
                tries = " (the server's deadline, --rest_api_timeout_in_ms; not retried)"
            raise KerasftError(
                expected(
                    "a successful TF Serving answer",
                    "error",
                    f"HTTP {err.code}{tries}: {detail}",
                    where,
                )
            ) from None
        except TimeoutError as err:  # read timeout (not retried)
            raise KerasftError(
                expected(
                    f"an answer within timeout={timeout} s",
                    "error",
                    one_line(err) or "timed out",
                    where,
                )
            ) from None
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as err:
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            if isinstance(reason, TimeoutError):
                raise KerasftError(
                    expected(
                        f"a connection within timeout={timeout} s",
                        "error",
                        one_line(reason) or "timed out",
                        where,
                    )
                ) from None
            if not last:
                time.sleep(backoff * 2**attempt)
                continue
            what = (one_line(reason) if isinstance(err, urllib.error.URLError)
                    else f"{type(err).__name__}: {one_line(err)}")
            raise KerasftError(
                expected(
                    "a reachable TF Serving REST server",
                    "error",
                    f"{what} (after {attempts} attempt{'s' if attempts > 1 else ''})",
                    where,
                )
            ) from None
        try:
            answer = json.loads(payload)
        except ValueError:
            raise KerasftError(
                expected("a JSON answer", "body", one_line(payload[:200]), where)
            ) from None
        if not isinstance(answer, dict):
            raise KerasftError(expected("a JSON object", "body", one_line(answer), where))
        return answer
    raise AssertionError("unreachable")  # pragma: no cover


def _error_detail(err: urllib.error.HTTPError) -> str:
    try:
        raw = err.read()
    except OSError:
        raw = b""
    try:
        data = json.loads(raw)
        if isinstance(data, dict) and "error" in data:
            return one_line(data["error"])
    except ValueError:
        pass
    return one_line(raw.decode("utf-8", "replace")) or one_line(err.reason)


def predict_rest(
    server_url: str,
    model: str,
    instances: Sequence[Any] | None = None,
    *,
    inputs: Any = None,
    signature_name: str = "serving_default",
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0, retries: int = 2, backoff: float = 0.5,  # the retry policy
) -> dict[str, Any]:
    """Calls TF Serving's REST predict API and returns the decoded JSON answer.

    ``POST {server_url}/v1/models/{model}[/versions/{version} | /labels/{label}]:predict`` with
    ``{"signature_name": ..., "instances": [...]}`` (row format: the answer holds
    ``"predictions"``, one object per row with ``probabilities``, ``class_ids``, ``labels``) or
    ``{"signature_name": ..., "inputs": ...}`` (columnar: the answer holds ``"outputs"``, one list
    per output). Give exactly one of ``instances`` and ``inputs``; NumPy arrays are converted to
    lists and ``bytes`` to ``{"b64": ...}``. ``server_url`` may omit ``http://``.

    Errors are one-line :class:`KerasftError`: HTTP 4xx/5xx (with TF Serving's ``{"error": ...}``
    text), timeouts and unreachable servers. Connection failures, 503 (unavailable) and 429
    (batch queue full) are retried ``retries`` times, sleeping ``backoff * 2**attempt`` seconds.
    Not retried: 504 (TF Serving's own deadline: a retry waits as long again), every other 4xx
    (the request is wrong), every other 5xx (a model error repeats) and client timeouts.
    """
    where = "predict_rest"
    if (instances is None) == (inputs is None):
        raise KerasftError(
            expected(
                "exactly one of instances (row format) or inputs (columnar format)",
                "given",
                [k for k, v in (("instances", instances), ("inputs", inputs)) if v is not None],
                where,
            )
        )
    if instances is not None:
        if isinstance(instances, np.ndarray):
            instances = instances.tolist()
        if (
            isinstance(instances, (str, bytes))
            or not isinstance(instances, Sequence)
            or (len(instances) == 0)
        ):
            raise KerasftError(
                expected(
                    "a non-empty list of instances", "instances", one_line(instances, 80), where
                )
            )
    if not isinstance(signature_name, str) or not signature_name:
        raise KerasftError(expected("a signature name", "signature_name", signature_name, where))
    url = _model_url(server_url, model, version, label, where) + ":predict"
    payload: dict[str, Any] = {"signature_name": signature_name}
    if instances is not None:
        payload["instances"] = list(instances)
    else:
        payload["inputs"] = inputs
    try:
        body = json.dumps(payload, default=_json_default).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise KerasftError(
            expected(
                "JSON-serializable inputs (lists, numbers, str, bytes, NumPy arrays)",
                "error",
                one_line(err),
                where,
            )
        ) from None
    return _http_json("POST", url, body, timeout, retries, backoff, where)


def get_model_status_rest(
    server_url: str,
    model: str,
    *,
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0, retries: int = 2, backoff: float = 0.5,  # the retry policy
) -> dict[str, Any]:
    """``GET {server_url}/v1/models/{model}[/versions/V | /labels/L]``: the versions' states.

    Returns TF Serving's answer, e.g. ``{"model_version_status": [{"version": "2", "state":
    "AVAILABLE", ...}]}``, newest version first; errors as in :func:`predict_rest`. TF Serving
    does not resolve a label here (get_model_status_impl.cc): with ``label`` the answer lists
    every version, as without it; ask for ``version`` to see one.
    """
    url = _model_url(server_url, model, version, label, "get_model_status_rest")
    return _http_json("GET", url, None, timeout, retries, backoff, "get_model_status_rest")
