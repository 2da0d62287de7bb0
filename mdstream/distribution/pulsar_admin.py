"""The Pulsar layout through the broker's admin REST API: tenant, namespaces, deduplication and
retention (idempotent; run by the mirror at start)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from mdstream.distribution.routes import NAMESPACES, TENANT


class PulsarAdminError(RuntimeError):
    """The admin API refused or could not be reached; the message names the call."""


def _call(admin_url: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{admin_url}/admin/v2{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            text = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 409 and method == "PUT":  # already exists
            return None
        raise PulsarAdminError(f"{method} {path}: HTTP {exc.code} {exc.read()[:300]!r}") from exc
    except OSError as exc:
        raise PulsarAdminError(
            f"{method} {path}: Pulsar admin at {admin_url} unreachable: {exc}"
        ) from exc
    return json.loads(text) if text else None


def ensure_layout(admin_url: str, cluster: str = "standalone") -> dict[str, dict[str, Any]]:
    """Create the tenant and namespaces; switch deduplication on and set each retention.
    Returns what the broker reports back per namespace (read after writing)."""
    _call(admin_url, "PUT", f"/tenants/{TENANT}", {"adminRoles": [], "allowedClusters": [cluster]})
    report = {}
    for namespace, minutes in NAMESPACES.items():
        path = f"/namespaces/{TENANT}/{namespace}"
        _call(admin_url, "PUT", path)
        _call(admin_url, "POST", f"{path}/deduplication", True)
        _call(
            admin_url,
            "POST",
            f"{path}/retention",
            {"retentionTimeInMinutes": minutes, "retentionSizeInMB": -1},
        )
        report[namespace] = {
            "deduplication": _call(admin_url, "GET", f"{path}/deduplication"),
            "retention": _call(admin_url, "GET", f"{path}/retention"),
        }
    return report


def deduplication_status(admin_url: str, topic: str) -> str:
    """The broker's deduplication state of a loaded topic ("Enabled", "Initialized", ...).

    A topic's first producer can connect before the broker has recovered its deduplication
    cursor; messages sent in that window are not deduplicated."""
    path = topic.replace("persistent://", "/persistent/", 1)
    return str((_call(admin_url, "GET", f"{path}/stats") or {}).get("deduplicationStatus"))
