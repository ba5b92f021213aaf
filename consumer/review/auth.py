"""Who is reviewing (pure; no I/O but reading the password file).

Two ways to know a reviewer, chosen by the settings:

* **Basic auth** against a file of salted password hashes (``review_password_file``), one reviewer
  a line: ``name:scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>`` (stdlib ``hashlib.scrypt``;
  ``shelver review --add-user NAME`` appends one). Names are compared exactly, hashes in constant time.
* **A trusted reverse-proxy header** (``review_trusted_header``, e.g. ``X-Forwarded-User``), only when
  switched on explicitly: the proxy authenticates, Shelver believes the header. The review port must
  then be reachable through the proxy alone.

The identity found here is the ``reviewer`` of every correction; nothing the client posts can change it.

CSRF: every form carries a token bound to the reviewer (HMAC of the name under a key drawn at start),
and a POST is refused unless the token matches and any ``Origin`` header names this host (behind a proxy
that rewrites ``Host``: the configured ``review_public_origin``).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_NAME = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")


class PasswordFileError(ValueError):
    """The password file is missing or has a bad line (one line of text, no hash in it)."""


def hash_password(password: str, *, salt: bytes | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return "$".join(["scrypt", str(n), str(r), str(p), base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True), n=int(n), r=int(r),
                             p=int(p), dklen=len(want))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, want)


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def read_password_file(path: Path) -> dict[str, str]:
    """name -> stored hash; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PasswordFileError(f"password file {path}: cannot read it ({exc.strerror or exc})") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not valid_name(name) or not stored.startswith("scrypt$") or stored.count("$") != 5:
            raise PasswordFileError(f"password file {path}, line {number}: expected name:scrypt$n$r$p$salt$hash")
        users[name] = stored
    return users


def add_user(path: Path, name: str, password: str) -> None:
    """Adds or replaces ``name``'s line (the file is created with mode 0600)."""
    if not valid_name(name):
        raise PasswordFileError(f"reviewer name {name!r}: use 1-128 letters, digits and . _ @ + -")
    if not password:
        raise PasswordFileError("empty password")
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [ln for ln in lines if ln.partition(":")[0].strip() != name]
    lines.append(f"{name}:{hash_password(password)}")
    # A new 0600 file renamed over the old one: an existing file readable by others becomes private too,
    # and a crash mid-write leaves the old file whole, never an empty one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class Authenticator:
    """``identify(headers)`` -> the reviewer's name, or None (the caller answers 401)."""

    users: dict[str, str]
    trusted_header: str = ""

    def __post_init__(self) -> None:
        self._verified: dict[tuple[str, str], bool] = {}  # scrypt costs ~50 ms: remember recent answers
        self._unknown_name_hash = ""  # what an unknown name is checked against (made on first use)

    def identify(self, headers) -> str | None:
        if self.trusted_header:
            values = headers.getlist(self.trusted_header) if hasattr(headers, "getlist") else [
                headers.get(self.trusted_header)]
            if len(values) != 1:  # a proxy that appends instead of replacing would let the client pick one
                return None
            name = (values[0] or "").strip()
            return name if valid_name(name) else None
        auth = headers.get("authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        try:
            name, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        stored = self.users.get(name)
        if stored is None:  # an unknown name costs what a wrong password costs: timing names no reviewer
            if not self._unknown_name_hash:
                self._unknown_name_hash = hash_password(os.urandom(16).hex())
            self._check(name, password, self._unknown_name_hash)
            return None
        return name if self._check(name, password, stored) else None

    def _check(self, name: str, password: str, stored: str) -> bool:
        key = (name, hashlib.sha256(f"{stored}\0{password}".encode()).hexdigest())
        ok = self._verified.get(key)
        if ok is None:
            ok = verify_password(password, stored)
            if len(self._verified) > 1024:
                self._verified.clear()
            self._verified[key] = ok
        return ok


class Csrf:
    """Tokens bound to the reviewer, under a key drawn when the server starts."""

    def __init__(self, key: bytes | None = None, public_origin: str = ""):
        self._key = key or os.urandom(32)
        self.public_origin = public_origin.lower()  # "scheme://host[:port]"; empty: compare with Host

    def token(self, reviewer: str) -> str:
        return hmac.new(self._key, reviewer.encode(), hashlib.sha256).hexdigest()

    def check(self, reviewer: str, token: str | None, origin: str | None, host: str | None) -> bool:
        if origin and origin != "null":
            if self.public_origin:  # behind a proxy the Host it sends is its upstream's, not the browser's
                if origin.lower().rstrip("/") != self.public_origin:
                    return False
            elif urlsplit(origin).netloc.lower() != (host or "").lower():
                return False
        elif origin == "null":
            return False
        # bytes: compare_digest refuses str with non-ASCII characters (a 500 where a 403 is due)
        return bool(token) and hmac.compare_digest(self.token(reviewer).encode(), token.encode())


__all__ = ["Authenticator", "Csrf", "PasswordFileError", "add_user", "hash_password", "read_password_file",
           "valid_name", "verify_password"]
