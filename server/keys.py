"""API keys as the server holds them: SHA-256 digests, each with a name, never the key.

A key entry (an item of FRAUD_API_KEYS or FRAUD_ADMIN_KEYS, or a line of a key file) is one of

- `<key>`: a plain key, hashed as it is read;
- `sha256:<64 hex digits>`: the SHA-256 digest of a key;
- `<name>:sha256:<64 hex digits>`: a digest with a name, of letters, digits, `_`, `.`, `-`.

A key without a name of its own is named `key-` and the first 8 hex digits of the digest of its
digest: stable, and telling nothing about the key or the digest in the file. A plain key cannot
be named (`name:key` would be a plain key holding a colon, as before hashed keys existed): to
name one, hash it. The name is what logs, access-log lines and rate-limit buckets carry.

`python -m server.keys hash [--name NAME]` makes a new random key and prints its entry and the
key; with `--stdin` it hashes a key read from standard input instead (never from the command
line, which other users can see and the shell keeps).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.errors import SettingsError

HASHED = "sha256:"
NAME = re.compile(r"[A-Za-z0-9_.-]+")
HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
NEW_KEY_BYTES = 32  # 256 random bits: 43 URL-safe characters


def digest_of(key: str) -> bytes:
    """The SHA-256 of a key's bytes. Keys are ASCII; a presented header value decoded as
    latin-1 (as Starlette and ScoringRoutes do) encodes back to the client's bytes."""
    return hashlib.sha256(key.encode("latin-1")).digest()


def default_name(digest: bytes) -> str:
    return "key-" + hashlib.sha256(digest).hexdigest()[:8]


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes = field(repr=False)

    def entry(self, named: bool = True) -> str:
        """The key's line for a key file, in the hashed form."""
        line = HASHED + self.digest.hex()
        return f"{self.name}:{line}" if named else line


def parse_key(text: str, where: str) -> ApiKey:
    """One entry, already stripped and not empty. Error messages say `where` and never
    show the entry, which may be a secret."""
    head, marker, rest = text.partition(HASHED)
    if marker and (head == "" or head.endswith(":")):
        name = head[:-1]
        if head and not NAME.fullmatch(name):
            raise SettingsError(
                f"{where}: a key's name is letters, digits, '_', '.' and '-' only"
                " (name:sha256:<digest>)"
            )
        if not HEX_DIGEST.fullmatch(rest):
            raise SettingsError(f"{where}: sha256: must be followed by 64 hex digits")
        digest = bytes.fromhex(rest)
        return ApiKey(name or default_name(digest), digest)
    if not (text.isascii() and text.isprintable()):
        # HTTP header values are bytes without a declared charset; a non-ASCII key
        # would match or not depending on the client's encoding.
        raise SettingsError(f"{where}: API keys must be printable ASCII")
    digest = digest_of(text)
    return ApiKey(default_name(digest), digest)


def parse_entries(entries: Sequence[str], setting: str) -> list[ApiKey]:
    """The items of a comma-separated setting, blanks already dropped."""
    return [
        parse_key(entry.strip(), f"{setting} entry {number}")
        for number, entry in enumerate(entries, 1)
        if entry.strip()
    ]


def parse_lines(text: str, where: str) -> list[ApiKey]:
    """A key file's text: one entry per line; '#' starts a comment; blank lines are skipped."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            keys.append(parse_key(entry, f"{where} line {number}"))
    return keys


def read_key_file(path: Path, setting: str) -> list[ApiKey]:
    where = f"{setting} {path}"
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of a key
    except UnicodeDecodeError:
        raise SettingsError(f"{where} is not UTF-8 text") from None
    except OSError as exc:
        raise SettingsError(f"cannot read {where}: {exc.strerror or exc}") from None
    return parse_lines(text, where)


@dataclass(frozen=True)
class KeyTable:
    """Accepted digests and their names. Replaced whole, never changed, so that a request
    reading it while the keys are reloaded sees the old table or the new one."""

    names: Mapping[bytes, str] = field(default_factory=dict, repr=False)
    digests: tuple[bytes, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, keys: Iterable[ApiKey]) -> KeyTable:
        names: dict[bytes, str] = {}
        for key in keys:
            known = names.setdefault(key.digest, key.name)
            if known != key.name:
                raise SettingsError(
                    f"one key is listed twice, named {known!r} and {key.name!r}: keep one"
                )
        return cls(names, tuple(names))

    def __len__(self) -> int:
        return len(self.digests)

    def shares_a_key_with(self, other: KeyTable) -> bool:
        return not self.names.keys().isdisjoint(other.names.keys())

    def name_set(self) -> frozenset[str]:
        return frozenset(self.names.values())


def hash_command(name: str | None, from_stdin: bool) -> str:
    """What `python -m server.keys hash` prints."""
    if from_stdin:
        key = sys.stdin.readline().strip()
        if not key:
            raise SettingsError("no key on standard input")
        parse_key(key, "the key on standard input")  # printable ASCII, not a hashed entry
        if key.startswith(HASHED) or f":{HASHED}" in key:
            raise SettingsError("the key on standard input is already a hashed entry")
    else:
        key = secrets.token_urlsafe(NEW_KEY_BYTES)
    digest = digest_of(key)
    api_key = ApiKey(name or default_name(digest), digest)
    lines = [
        f"Key file line (key name {api_key.name}), for FRAUD_API_KEY_FILE or FRAUD_API_KEYS"
        " (or the admin ones):",
        api_key.entry(named=name is not None),
    ]
    if not from_stdin:
        lines += [
            "Secret key for the client's X-API-Key header (shown only now; the server keeps"
            " only its hash):",
            key,
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server.keys", description="API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    hashing = commands.add_parser(
        "hash", help="make a new key (or hash one from stdin) and print its key file line"
    )
    hashing.add_argument("--name", help="the key's name in logs and rate limits")
    hashing.add_argument(
        "--stdin", action="store_true", help="hash the key on standard input instead of a new one"
    )
    args = parser.parse_args(argv)
    if args.name is not None and not NAME.fullmatch(args.name):
        parser.error("--name is letters, digits, '_', '.' and '-' only")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sys.stdout.write(hash_command(args.name, args.stdin))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
