"""Provider credentials: from the environment or a secret file, never from code or logs."""

from __future__ import annotations

import os
from pathlib import Path


class MissingCredential(RuntimeError):
    """A provider key is needed and neither MDSTREAM_<NAME> nor MDSTREAM_<NAME>_FILE is set."""


def read_secret(name: str, env: dict[str, str] | None = None) -> str:
    """`MDSTREAM_<name>`, or the first line of the file named by `MDSTREAM_<name>_FILE`
    (how container secrets are mounted). Raises MissingCredential naming both variables."""
    env = os.environ if env is None else env
    value = env.get(f"MDSTREAM_{name}")
    if value:
        return value.strip()
    path = env.get(f"MDSTREAM_{name}_FILE")
    if path:
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise MissingCredential(f"MDSTREAM_{name}_FILE={path} cannot be read: {exc}") from None
        if text:
            return text.splitlines()[0].strip()
        raise MissingCredential(f"MDSTREAM_{name}_FILE={path} is empty")
    raise MissingCredential(f"set MDSTREAM_{name} or MDSTREAM_{name}_FILE (a file holding it)")


def redact(data: bytes, secrets: tuple[str, ...]) -> bytes:
    """`data` with every secret replaced, for dead letters and logs."""
    for secret in secrets:
        if secret:
            data = data.replace(secret.encode(), b"<redacted>")
    return data


def redact_text(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text
