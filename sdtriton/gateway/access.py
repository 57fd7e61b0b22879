"""Who may call the gateway and how often: API keys (``Authorization: Bearer``) and per-key token buckets.

An API keys file holds one key a line; blank lines and ``#`` comments are skipped. A key may carry its own rate
limit after it, ``KEY rate_limit_per_s=0.5 rate_limit_burst=2``; other keys get the gateway's (``[limits]``).
Keys never reach a log or a metric: a key is named by :attr:`ApiKey.key_id`, a digest of it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sdtriton.gateway.errors import SettingsError

# Characters of the digest that names a key in logs.
_KEY_ID_CHARS = 12
_KEY_OPTIONS = ("rate_limit_per_s", "rate_limit_burst")
# Callers kept before buckets that have filled up again are dropped (a full bucket is the same as none).
_MAX_BUCKETS = 10_000


@dataclass(frozen=True)
class ApiKey:
    """An accepted key and, optionally, its own rate limit (None: the gateway's)."""

    key: str
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None

    @property
    def key_id(self) -> str:
        """A digest that names the key without showing it."""
        return "key-" + hashlib.sha256(self.key.encode()).hexdigest()[:_KEY_ID_CHARS]

    def __repr__(self) -> str:
        return f"ApiKey({self.key_id}, rate_limit_per_s={self.rate_limit_per_s}, burst={self.rate_limit_burst})"


def parse_api_keys(text: str, *, source: str) -> list[ApiKey]:
    """The keys of an API keys file's text (the format is the module's docstring).

    Raises:
        SettingsError: a line is malformed (names ``source`` and the line number, never the key).
    """
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        options: dict[str, str] = {}
        for word in words[1:]:
            name, equals, value = word.partition("=")
            if not equals or name not in _KEY_OPTIONS:
                raise SettingsError(
                    f"{source}, line {number}: expected KEY [rate_limit_per_s=R] [rate_limit_burst=B], "
                    f"got an option {name!r}"
                )
            options[name] = value
        try:
            rate = float(options["rate_limit_per_s"]) if "rate_limit_per_s" in options else None
            burst = int(options["rate_limit_burst"]) if "rate_limit_burst" in options else None
        except ValueError as error:
            raise SettingsError(f"{source}, line {number}: {error}") from None
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise SettingsError(f"{source}, line {number}: rate_limit_per_s must be a positive number")
        if burst is not None and burst < 1:
            raise SettingsError(f"{source}, line {number}: rate_limit_burst must be at least 1")
        keys.append(ApiKey(words[0], rate, burst))
    return keys


def find_key(keys: Iterable[ApiKey], presented: str) -> ApiKey | None:
    """The configured key equal to ``presented``; every key is compared in constant time."""
    found = None
    for key in keys:
        if hmac.compare_digest(key.key.encode(), presented.encode()):
            found = key
    return found


class RateLimiter:
    """Token buckets, one per caller: ``rate_per_s`` tokens a second up to ``burst``; a request takes one.

    Args:
        clock: monotonic seconds (a fake one in tests).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, caller: str, *, rate_per_s: float, burst: int) -> float:
        """Takes a token from ``caller``'s bucket; returns 0 if there was one, else the seconds until there is."""
        with self._lock:
            now = self._clock()
            if len(self._buckets) >= _MAX_BUCKETS:
                self._buckets = {name: b for name, b in self._buckets.items() if b.tokens_at(now) < b.burst}
            bucket = self._buckets.get(caller)
            tokens = float(burst) if bucket is None else min(float(burst), bucket.tokens_at(now))
            wait_s = 0.0 if tokens >= 1 else (1 - tokens) / rate_per_s
            self._buckets[caller] = _Bucket(tokens - 1 if tokens >= 1 else tokens, now, rate_per_s, burst)
            return wait_s


@dataclass(frozen=True)
class _Bucket:
    tokens: float
    when: float
    rate_per_s: float
    burst: int

    def tokens_at(self, now: float) -> float:
        return min(float(self.burst), self.tokens + (now - self.when) * self.rate_per_s)
