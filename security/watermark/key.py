"""The secret watermark key: a 256-bit secret plus the parameters every derivation needs.

The key file is JSON (`WatermarkKey`, versioned), written with mode 0600 and
never sent anywhere. What may be published is `watermark_id`, a one-way hash
prefix of the secret that names the key without revealing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from headrace.errors import WatermarkError

KEY_SCHEMA_VERSION: Literal[1] = 1
KEY_KIND: Literal["headrace-watermark-key"] = "headrace-watermark-key"
SECRET_BYTES = 32
WATERMARK_ID_HEX = 24
_ID_DOMAIN = b"headrace/watermark-id/v1\x00"


class WatermarkKey(BaseModel):
    """A watermark key file. `secret` is hidden from repr and logs (pydantic SecretStr)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["headrace-watermark-key"] = KEY_KIND
    schema_version: Literal[1] = KEY_SCHEMA_VERSION
    secret: SecretStr = Field(description="256-bit secret as 64 hex digits.")
    trigger_count: int = Field(
        default=100, ge=10, le=10_000, description="Trigger inputs in the black-box trigger set."
    )
    whitebox_bits: int = Field(
        default=64, ge=0, le=4096, description="Bits of the white-box signature; 0 = none."
    )
    whitebox_layer: str = Field(
        default="auto",
        description="state_dict name of the weight tensor holding the signature; "
        "'auto' = the convolution weight with the most elements.",
    )
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("secret")
    @classmethod
    def _hex_secret(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError("secret must be hexadecimal") from None
        if len(raw) != SECRET_BYTES:
            raise ValueError(f"secret must be {SECRET_BYTES} bytes ({2 * SECRET_BYTES} hex digits)")
        return value

    @property
    def secret_bytes(self) -> bytes:
        return bytes.fromhex(self.secret.get_secret_value())

    @property
    def watermark_id(self) -> str:
        """Public, one-way name of this key (a sha256 prefix); safe to publish."""
        return hashlib.sha256(_ID_DOMAIN + self.secret_bytes).hexdigest()[:WATERMARK_ID_HEX]

    def to_json(self) -> str:
        """The key file's text, secret included."""
        data = self.model_dump(mode="json")
        data["secret"] = self.secret.get_secret_value()
        return json.dumps(data, indent=2) + "\n"


def generate_key(
    trigger_count: int = 100, whitebox_bits: int = 64, whitebox_layer: str = "auto"
) -> WatermarkKey:
    """A new key with a fresh secret from the OS's CSPRNG."""
    return WatermarkKey(
        secret=SecretStr(secrets.token_hex(SECRET_BYTES)),
        trigger_count=trigger_count,
        whitebox_bits=whitebox_bits,
        whitebox_layer=whitebox_layer,
    )


def save_key(key: WatermarkKey, path: Path, overwrite: bool = False) -> Path:
    """Write the key readable by its owner only (mode 0600); replaces a file only if asked."""
    if path.is_dir():
        raise WatermarkError(f"{path} is a folder; give the key file's path, e.g. {path}/key.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise WatermarkError(
            f"{path} already exists; a key is not replaced by accident "
            "(choose another --out, or pass --force to overwrite it)"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key.to_json())
    return path


def load_key(path: Path) -> WatermarkKey:
    """Read a key file; refuses files other users may read or write."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WatermarkError(
            f"watermark key {path} not found; "
            f"create one with `headrace watermark keygen --out {path}`"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WatermarkError(
            f"watermark key {path} is readable or writable by other users "
            f"(mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
        )
    try:
        return WatermarkKey.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise WatermarkError(f"{path} is not a headrace watermark key: {problems}") from None
