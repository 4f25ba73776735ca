"""A model's traffic policy, `<repository>/<name>/policy.json`: which version answers (the
champion), which one is scored in its shadow, and which one answers a share of the traffic (the
canary), with the guard's bounds. Pure: parsing, checking, the sticky share and the file.

    {"champion": "4", "shadow": "5", "canary": "5", "share": 0.1,
     "guard": {"window": 2000, "min_compared": 200, "min_agreement": 0.95,
               "max_psi": 0.25, "max_p99_ratio": 3.0},
     "previous": "3"}

Only `champion` is required. `previous` is the champion before the last promotion, where a
rollback without a canary returns to.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from server.errors import BadRequest, Conflict

FILE_NAME = "policy.json"
FIELDS = frozenset({"champion", "shadow", "canary", "share", "guard", "previous"})
VERSION_FIELDS = ("champion", "shadow", "canary", "previous")
MAX_POLICY_BYTES = 64 * 1024
HASH_SPAN = float(2**64)


class PolicyError(BadRequest):
    """A policy that is not well formed: a 400 on the admin routes, a log line for the file."""


class PolicyConflict(Conflict):
    """A well-formed change the served versions do not allow now: a 409."""


@dataclass(frozen=True)
class Guard:
    """When the canary is rolled back: over its last `window` compared requests (judged once
    `min_compared` are in, or the whole window if it is smaller), decision agreement with the
    champion below `min_agreement`, PSI between their scores above `max_psi`, or its p99
    latency above `max_p99_ratio` times the champion's; and at once on a model error."""

    window: int = 2000
    min_compared: int = 200
    min_agreement: float = 0.95
    max_psi: float = 0.25
    max_p99_ratio: float = 3.0

    def __post_init__(self) -> None:
        if not (type(self.window) is int and self.window >= 10):
            raise PolicyError("guard.window must be a whole number of requests, at least 10")
        if not (type(self.min_compared) is int and self.min_compared >= 1):
            raise PolicyError("guard.min_compared must be a whole number, at least 1")
        if not (isinstance(self.min_agreement, float) and 0.0 <= self.min_agreement <= 1.0):
            raise PolicyError("guard.min_agreement must be a number from 0 to 1")
        for name in ("max_psi", "max_p99_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, float) and math.isfinite(value) and value > 0.0):
                raise PolicyError(f"guard.{name} must be a positive number")


@dataclass(frozen=True)
class Policy:
    champion: str
    shadow: str | None = None
    canary: str | None = None
    share: float = 0.0
    guard: Guard = field(default_factory=Guard)
    previous: str | None = None

    def __post_init__(self) -> None:
        for name in VERSION_FIELDS:
            value = getattr(self, name)
            if value is not None and not is_version(value):
                raise PolicyError(f"{name} must be a version, as a string of digits: {value!r}")
        if not (isinstance(self.share, float) and 0.0 <= self.share <= 1.0):
            raise PolicyError("share must be a number from 0 to 1")
        if self.canary is None and self.share:
            raise PolicyError("share needs a canary")
        if self.champion in (self.shadow, self.canary):
            # Well formed, yet a version cannot be compared with itself: a conflict (409).
            raise PolicyConflict(
                "the shadow and the canary must be other versions than the champion"
            )

    def versions(self) -> set[str]:
        """The versions it needs served (previous is only remembered)."""
        return {v for v in (self.champion, self.shadow, self.canary) if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "share"} | (
            {"share": self.share} if self.canary is not None else {}
        )

    def without_canary(self) -> Policy:
        return replace(self, canary=None, share=0.0)

    def promoted(self) -> Policy:
        """The canary (else the shadow) becomes the champion; the old one is `previous`."""
        new = self.canary or self.shadow
        if new is None:
            raise PolicyConflict("nothing to promote: the policy has no canary or shadow")
        return Policy(new, guard=self.guard, previous=self.champion)


def is_version(value: object) -> bool:
    return type(value) is str and value.isascii() and value.isdigit() and value == str(int(value))


def parse(payload: Any) -> Policy:
    """A policy from its JSON object, or a PolicyError saying what is wrong."""
    if type(payload) is not dict:
        raise PolicyError("a policy is a JSON object")
    unknown = sorted(set(payload) - FIELDS)
    if unknown:
        raise PolicyError(
            f"unknown policy field {unknown[0]!r}; known: {', '.join(sorted(FIELDS))}"
        )
    if "champion" not in payload:
        raise PolicyError("a policy names its champion")
    guard = payload.get("guard", {})
    if type(guard) is not dict:
        raise PolicyError("guard must be an object")
    known = Guard.__dataclass_fields__
    strange = sorted(set(guard) - set(known))
    if strange:
        raise PolicyError(f"unknown guard field {strange[0]!r}; known: {', '.join(known)}")
    share = payload.get("share", 0.0)
    return Policy(
        champion=payload["champion"],
        shadow=payload.get("shadow"),
        canary=payload.get("canary"),
        share=as_float(share, "share"),
        guard=Guard(
            **{  # type: ignore[arg-type]
                k: as_whole(v) if k in ("window", "min_compared") else as_float(v, f"guard.{k}")
                for k, v in guard.items()
            }
        ),
        previous=payload.get("previous"),
    )


def as_float(value: Any, name: str) -> float:
    # JSON's 1 is an int; a boolean is no number here.
    if type(value) is int:
        return float(value)
    if type(value) is not float:
        raise PolicyError(f"{name} must be a number")
    return value


def as_whole(value: Any) -> Any:
    # JSON does not tell 200 from 200.0; a whole float is a whole number (Guard checks the rest).
    return int(value) if type(value) is float and value.is_integer() else value


def parse_bytes(body: bytes) -> Policy:
    if len(body) > MAX_POLICY_BYTES:
        raise PolicyError(f"a policy is at most {MAX_POLICY_BYTES} bytes")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PolicyError(f"the policy is not valid JSON: {exc}") from None
    return parse(payload)


def bucket(key: str) -> float:
    """Where `key` falls in [0, 1): the same place in every process and every run, so that
    one transaction (or account) always meets the same version while the share holds."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / HASH_SPAN


def read(folder: Path) -> tuple[Policy | None, tuple[int, int, int] | None]:
    """The policy in the model's folder (None if there is none) and the file's signature;
    a PolicyError for a file that is there but wrong."""
    path = folder / FILE_NAME
    try:
        stat = path.stat()
        body = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc}") from None
    return parse_bytes(body), (stat.st_size, stat.st_mtime_ns, stat.st_ino)


def signature_of(folder: Path) -> tuple[int, int, int] | None:
    try:
        stat = (folder / FILE_NAME).stat()
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino)


def write(folder: Path, policy: Policy | None) -> tuple[int, int, int] | None:
    """Replace the file in one rename (a reader never sees half of it); None removes it."""
    path = folder / FILE_NAME
    if policy is None:
        path.unlink(missing_ok=True)
        return None
    staging = folder / f".{FILE_NAME}.{os.getpid()}"
    staging.write_bytes(orjson.dumps(policy.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(staging, path)
    return signature_of(folder)
