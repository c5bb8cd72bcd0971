"""API keys: created once, shown once, stored hashed; each key belongs to one owner.

A key is ``gtk_<id>_<secret>``: ``id`` (8 hex digits) names the key in listings and revocation;
the secret is 32 random bytes. Only the SHA-256 of the whole key is stored (in
``$GEOTUNE_HOME/serve/keys.db``, SQLite): a random 256-bit secret needs no slow password hash,
and a stolen database reveals no key. The server reads the store on every request, so a key
created or revoked with ``geotune keys`` takes effect at once, without a restart.

Standard library only: ``geotune keys`` must start fast.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from datamodules.errors import UserError

PREFIX = "gtk_"
OWNER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# 'local' is the single user of the CLI and `geotune serve --dev` (the CLI's datasets and the
# models without an owner tag); the others are kept for the operator
RESERVED_OWNERS = frozenset({"local", "geotune", "admin", "root", "system"})


class ApiKeyError(UserError):
    """Bad key request: unknown key id, bad owner name."""


def check_owner(owner: str) -> str:
    if not OWNER_RE.match(owner or ""):
        raise ApiKeyError(
            f"owner {owner!r} is not valid: use 1-32 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit (e.g. alice, team-42)"
        )
    return owner


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class KeyStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, hash TEXT UNIQUE NOT NULL, "
                "owner TEXT NOT NULL, note TEXT, created TEXT NOT NULL, revoked TEXT)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def create(self, owner: str, note: str = "") -> tuple[str, str]:
        """A new key for ``owner``; returns ``(id, key)``. The key is not stored: show it once."""
        check_owner(owner)
        if owner in RESERVED_OWNERS:
            raise ApiKeyError(
                f"owner {owner!r} is reserved ({', '.join(sorted(RESERVED_OWNERS))}); choose "
                "another name. The local user of the CLI needs no key: geotune serve --dev"
            )
        key_id = secrets.token_hex(4)
        key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO keys (id, hash, owner, note, created) VALUES (?, ?, ?, ?, ?)",
                (key_id, _hash(key), owner, note, _now()),
            )
        return key_id, key

    def revoke(self, key_id: str) -> dict:
        with closing(self._connect()) as db, db:
            row = db.execute("SELECT owner, revoked FROM keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                raise ApiKeyError(
                    f"no API key with id {key_id!r}; `geotune keys list` shows the ids"
                )
            if row[1] is None:
                db.execute("UPDATE keys SET revoked = ? WHERE id = ?", (_now(), key_id))
        return {"id": key_id, "owner": row[0], "already_revoked": row[1] is not None}

    def list(self) -> list[dict]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT id, owner, note, created, revoked FROM keys ORDER BY created, id"
            ).fetchall()
        return [
            dict(zip(("id", "owner", "note", "created", "revoked"), r, strict=True)) for r in rows
        ]

    def owner_for(self, key: str) -> str | None:
        """The owner of an active key, or None for an unknown or revoked one, or one made for
        a reserved owner (by a geotune that did not refuse them yet)."""
        if not key.startswith(PREFIX) or len(key) > 200:
            return None
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT owner FROM keys WHERE hash = ? AND revoked IS NULL", (_hash(key),)
            ).fetchone()
        return row[0] if row and row[0] not in RESERVED_OWNERS else None

    def active_count(self) -> int:
        with closing(self._connect()) as db:
            return db.execute("SELECT COUNT(*) FROM keys WHERE revoked IS NULL").fetchone()[0]
