"""The shared job store: Redis, for several gateway replicas on one queue.

Every change is one Lua script (Redis runs each atomically, so two replicas never claim the same job, and a
client killed mid-call leaves either all of a change or none of it). Finished jobs, their images, delivery
records and idempotency keys expire after ``result_ttl_s``; queued and running jobs never expire. Keys, all under
``prefix``::

    job:<id>          hash: the job's fields (JSON for request, error, images)
    images:<id>       hash: image index -> encoded bytes
    deliveries:<id>   list: JSON of each webhook delivery attempt
    queue             sorted set: queued job ids by submit order
    running           sorted set: running job ids by lease expiry
    recent            sorted set: every job id by submit order (recent:<scope digest> per scope)
    idem:<digest>     string: the job id of an idempotency key in its scope
    seq               counter: the submit order

The scripts name keys they build from the prefix, so one Redis (not a cluster) holds a store. How durable the
jobs are across a restart of Redis itself is Redis's configuration (``appendonly yes`` in deployments).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from sdtriton.gateway.store import (
    DEFAULT_MAX_ATTEMPTS,
    JOB_ID_PREFIX,
    QUEUED,
    RUNNING,
    Claim,
    GeneratedImage,
    Job,
    JobStoreError,
    LeaseStatus,
    ResultImage,
    Submitted,
    WebhookDelivery,
    cancelled_error,
    check_final_status,
    check_lease,
    encode_request,
    interrupted_error,
    scope_digest,
)

DEFAULT_RESULT_TTL_S = 3600.0
DEFAULT_PREFIX = "sdtriton:jobs:"
# How many index entries of expired jobs each submit looks at (and drops): keeps the indexes from growing.
_INDEX_SWEEP = 8

# Every script's first three arguments: the key prefix, the result TTL in ms (0: none), and the caller's time.
_PRELUDE = """
local prefix = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local now = ARGV[3]
local function jkey(id) return prefix .. 'job:' .. id end
local function held(key, token)
  return redis.call('HGET', key, 'token') == token and redis.call('HGET', key, 'status') == 'running'
end
-- The one place a job becomes final.
local function finish(id, status, error_json)
  local key = jkey(id)
  redis.call('HSET', key, 'status', status, 'finished_at', now)
  if error_json ~= '' then redis.call('HSET', key, 'error', error_json) end
  if status == 'succeeded' then redis.call('HSET', key, 'step', redis.call('HGET', key, 'total') or '0') end
  redis.call('HDEL', key, 'token', 'lease_expires_at')
  redis.call('ZREM', prefix .. 'queue', id)
  redis.call('ZREM', prefix .. 'running', id)
  if ttl_ms > 0 then
    redis.call('PEXPIRE', key, ttl_ms)
    redis.call('PEXPIRE', prefix .. 'images:' .. id, ttl_ms)
    redis.call('PEXPIRE', prefix .. 'deliveries:' .. id, ttl_ms)
    local idem = redis.call('HGET', key, 'idempotency_ref')
    if idem then redis.call('PEXPIRE', idem, ttl_ms) end
  end
end
"""

# ARGV[4] id, [5] idempotency key or '', [6] the scope's recent index, [7] sweep count, [8..] field, value pairs.
# Returns {existing id} for a known idempotency key, else {id, the new job's fields}.
_CREATE = """
local idem = ARGV[5]
if idem ~= '' then
  local existing = redis.call('GET', idem)
  if existing and redis.call('EXISTS', jkey(existing)) == 1 then return {existing} end
end
local id = ARGV[4]
local seq = redis.call('INCR', prefix .. 'seq')
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', jkey(id), 'seq', seq, unpack(fields))
if idem ~= '' then
  redis.call('SET', idem, id)
  redis.call('HSET', jkey(id), 'idempotency_ref', idem)
end
redis.call('ZADD', prefix .. 'queue', seq, id)
for _, index in ipairs({prefix .. 'recent', ARGV[6]}) do
  for _, old in ipairs(redis.call('ZRANGE', index, 0, tonumber(ARGV[7]) - 1)) do
    if redis.call('EXISTS', jkey(old)) == 0 then redis.call('ZREM', index, old) end
  end
  redis.call('ZADD', index, seq, id)
end
return {id, redis.call('HGETALL', jkey(id))}
"""

# ARGV[4] owner, [5] token, [6] lease expiry, [7] max attempts, [8] cancelled error, [9] interrupted error.
_CLAIM = """
local running = prefix .. 'running'
local queue = prefix .. 'queue'
while true do
  local id
  local expired = redis.call('ZRANGEBYSCORE', running, '-inf', '(' .. now, 'LIMIT', 0, 1)
  if #expired > 0 then
    id = expired[1]
  else
    local first = redis.call('ZRANGE', queue, 0, 0)
    if #first == 0 then return false end
    id = first[1]
  end
  local key = jkey(id)
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', running, id)
    redis.call('ZREM', queue, id)
  elseif redis.call('HGET', key, 'cancel_requested') == '1' then
    finish(id, 'cancelled', ARGV[8])
  elseif tonumber(redis.call('HGET', key, 'attempts') or '0') >= tonumber(ARGV[7]) then
    finish(id, 'failed', ARGV[9])
  else
    redis.call('ZREM', queue, id)
    redis.call('HSET', key, 'status', 'running', 'owner', ARGV[4], 'token', ARGV[5], 'lease_expires_at', ARGV[6],
      'step', '0', 'total', '0')
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSETNX', key, 'started_at', now)
    redis.call('ZADD', running, ARGV[6], id)
    return id
  end
end
"""

# ARGV[4] id, [5] token, [6] lease expiry, [7] step or '', [8] total or ''.
_RENEW = """
local id = ARGV[4]
local key = jkey(id)
local cancel = 0
if redis.call('HGET', key, 'cancel_requested') == '1' then cancel = 1 end
if not held(key, ARGV[5]) then return {0, cancel} end
redis.call('HSET', key, 'lease_expires_at', ARGV[6])
if ARGV[7] ~= '' then redis.call('HSET', key, 'step', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSET', key, 'total', ARGV[8]) end
redis.call('ZADD', prefix .. 'running', ARGV[6], id)
return {1, cancel}
"""

# ARGV[4] id, [5] token, [6] status, [7] error or '', [8] total steps or '', [9] images' JSON, [10..] each image.
_FINISH = """
local id = ARGV[4]
if not held(jkey(id), ARGV[5]) then return 0 end
if ARGV[8] ~= '' then redis.call('HSET', jkey(id), 'total', ARGV[8]) end
redis.call('HSET', jkey(id), 'images', ARGV[9])
for i = 10, #ARGV do redis.call('HSET', prefix .. 'images:' .. id, tostring(i - 10), ARGV[i]) end
finish(id, ARGV[6], ARGV[7])
return 1
"""

# ARGV[4] id, [5] token, [6] cancelled error.
_RELEASE = """
local id = ARGV[4]
local key = jkey(id)
if not held(key, ARGV[5]) then return 0 end
if redis.call('HGET', key, 'cancel_requested') == '1' then
  finish(id, 'cancelled', ARGV[6])
  return 1
end
redis.call('HSET', key, 'status', 'queued', 'step', '0', 'total', '0')
redis.call('HDEL', key, 'token', 'lease_expires_at')
redis.call('HINCRBY', key, 'attempts', -1)
redis.call('ZREM', prefix .. 'running', id)
redis.call('ZADD', prefix .. 'queue', redis.call('HGET', key, 'seq'), id)
return 1
"""

# ARGV[4] id, [5] cancelled error.
_CANCEL = """
local id = ARGV[4]
local status = redis.call('HGET', jkey(id), 'status')
if not status then return 0 end
if status == 'queued' then
  finish(id, 'cancelled', ARGV[5])
elseif status == 'running' then
  redis.call('HSET', jkey(id), 'cancel_requested', '1')
end
return 1
"""

# ARGV[4] id, [5] the delivery's JSON.
_RECORD_DELIVERY = """
local id = ARGV[4]
local key = jkey(id)
if redis.call('EXISTS', key) == 0 then return 0 end
local deliveries = prefix .. 'deliveries:' .. id
redis.call('RPUSH', deliveries, ARGV[5])
local pttl = redis.call('PTTL', key)
if pttl > 0 then redis.call('PEXPIRE', deliveries, pttl) end
return 1
"""


class RedisJobStore:
    """The :class:`~sdtriton.gateway.store.JobStore` in Redis.

    Args:
        url: ``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        result_ttl_s: How long a finished job, its images and its delivery records are kept; None keeps them.
        prefix: Every key's prefix (one Redis can hold several stores).
    """

    def __init__(self, url: str, *, result_ttl_s: float | None = DEFAULT_RESULT_TTL_S, prefix: str = DEFAULT_PREFIX):
        if result_ttl_s is not None and not result_ttl_s > 0:
            raise JobStoreError(f"result_ttl_s must be > 0 or None, got {result_ttl_s}")
        self.url = url
        self.result_ttl_s = result_ttl_s
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, decode_responses=False)
        self._scripts = {
            name: self._redis.register_script(_PRELUDE + body)
            for name, body in (
                ("create", _CREATE),
                ("claim", _CLAIM),
                ("renew", _RENEW),
                ("finish", _FINISH),
                ("release", _RELEASE),
                ("cancel", _CANCEL),
                ("record_delivery", _RECORD_DELIVERY),
            )
        }

    def __repr__(self) -> str:
        return f"RedisJobStore({self.url!r}, prefix={self.prefix!r})"

    # The protocol.

    def create(
        self,
        request: Mapping[str, Any],
        *,
        scope: str = "",
        idempotency_key: str | None = None,
        webhook: str | None = None,
    ) -> Submitted:
        body = encode_request(request)
        job_id = JOB_ID_PREFIX + secrets.token_hex(16)
        fields: dict[str, str | float] = {
            "id": job_id,
            "status": QUEUED,
            "request": body,
            "scope": scope,
            "created_at": repr(time.time()),
            "step": 0,
            "total": 0,
            "attempts": 0,
            "cancel_requested": 0,
        }
        if idempotency_key is not None:
            fields["idempotency_key"] = idempotency_key
        if webhook is not None:
            fields["webhook"] = webhook
        idempotency_ref = ""
        if idempotency_key is not None:
            digest = hashlib.sha256(json.dumps([scope, idempotency_key]).encode()).hexdigest()
            idempotency_ref = f"{self.prefix}idem:{digest}"
        pairs = [item for pair in fields.items() for item in pair]
        got = self._run("create", job_id, idempotency_ref, self._recent_key(scope), _INDEX_SWEEP, *pairs)
        if len(got) == 1:  # an idempotent resubmit: the first job
            job = self.get(got[0].decode())
            if job is None:
                raise JobStoreError(f"job {got[0].decode()} expired as it was resubmitted")
            return Submitted(job, created=False)
        flat = got[1]
        # The new job as the script left it: read after it, a worker of another replica may have claimed it.
        return Submitted(_job(dict(zip(flat[::2], flat[1::2], strict=True)), []), created=True)

    def get(self, job_id: str) -> Job | None:
        with self._redis.pipeline(transaction=True) as pipeline:
            pipeline.hgetall(self._job_key(job_id))
            pipeline.lrange(f"{self.prefix}deliveries:{job_id}", 0, -1)
            fields, deliveries = pipeline.execute()
        return _job(fields, deliveries) if fields else None

    def queue_position(self, job_id: str) -> int | None:
        return self._redis.zrank(f"{self.prefix}queue", job_id)

    def claim(self, owner: str, *, lease_s: float, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Claim | None:
        check_lease(lease_s)
        token = secrets.token_hex(16)
        claimed = self._run(
            "claim",
            owner,
            token,
            repr(time.time() + lease_s),
            max_attempts,
            json.dumps(cancelled_error()),
            json.dumps(interrupted_error()),
        )
        if claimed is None:
            return None
        job = self.get(claimed.decode())
        if job is None:
            raise JobStoreError(f"claimed job {claimed.decode()} vanished")
        return Claim(job, token)

    def renew(
        self, job_id: str, token: str, *, lease_s: float, step: int | None = None, total: int | None = None
    ) -> LeaseStatus:
        check_lease(lease_s)
        held, cancel = self._run(
            "renew",
            job_id,
            token,
            repr(time.time() + lease_s),
            "" if step is None else step,
            "" if total is None else total,
        )
        return LeaseStatus(held=bool(held), cancel_requested=bool(cancel))

    def finish(
        self,
        job_id: str,
        token: str,
        *,
        status: str,
        images: Sequence[GeneratedImage] = (),
        error: Mapping[str, Any] | None = None,
        total: int | None = None,
    ) -> bool:
        check_final_status(status)
        listed = [
            {"index": index, "format": image.format, "seed": image.seed, "size_bytes": len(image.data)}
            for index, image in enumerate(images)
        ]
        error_json = json.dumps(dict(error)) if error is not None else ""
        done = self._run(
            "finish",
            job_id,
            token,
            status,
            error_json,
            "" if total is None else str(total),
            json.dumps(listed),
            *(image.data for image in images),
        )
        return bool(done)

    def release(self, job_id: str, token: str) -> bool:
        return bool(self._run("release", job_id, token, json.dumps(cancelled_error())))

    def request_cancel(self, job_id: str) -> Job | None:
        if not self._run("cancel", job_id, json.dumps(cancelled_error())):
            return None
        return self.get(job_id)

    def image(self, job_id: str, index: int) -> tuple[bytes, str] | None:
        job = self.get(job_id)
        if job is None or not 0 <= index < len(job.images):
            return None
        data = self._redis.hget(f"{self.prefix}images:{job_id}", str(index))
        return (data, job.images[index].format) if data is not None else None

    def list_recent(self, *, limit: int = 20, scope: str | None = None) -> list[Job]:
        index = f"{self.prefix}recent" if scope is None else self._recent_key(scope)
        jobs: list[Job] = []
        start = 0
        while len(jobs) < limit:
            ids = self._redis.zrevrange(index, start, start + limit - 1)
            if not ids:
                break
            start += len(ids)
            for raw in ids:
                job = self.get(raw.decode())
                if job is None:
                    self._redis.zrem(index, raw)
                    start -= 1
                elif len(jobs) < limit:
                    jobs.append(job)
        return jobs

    def record_delivery(self, job_id: str, delivery: WebhookDelivery) -> bool:
        record = {
            "attempt": delivery.attempt,
            "at": delivery.at,
            "status_code": delivery.status_code,
            "error": delivery.error,
            "duration_s": delivery.duration_s,
        }
        return bool(self._run("record_delivery", job_id, json.dumps(record)))

    def count_active(self) -> dict[str, int]:
        with self._redis.pipeline(transaction=True) as pipeline:
            pipeline.zcard(f"{self.prefix}queue")
            pipeline.zcard(f"{self.prefix}running")
            queued, running = pipeline.execute()
        return {QUEUED: queued, RUNNING: running}

    def close(self) -> None:
        self._redis.close()

    # Keys and scripts.

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _recent_key(self, scope: str) -> str:
        return f"{self.prefix}recent:{scope_digest(scope)}"

    def _run(self, script: str, *arguments: Any) -> Any:
        ttl_ms = 0 if self.result_ttl_s is None else max(1, round(self.result_ttl_s * 1000))
        return self._scripts[script](args=[self.prefix, ttl_ms, repr(time.time()), *arguments])


def _job(fields: Mapping[bytes, bytes], deliveries: Sequence[bytes]) -> Job:
    """A job from its hash and its delivery list."""
    text = {key.decode(): value.decode() for key, value in fields.items()}

    def number(name: str) -> float | None:
        return float(text[name]) if name in text else None

    return Job(
        id=text["id"],
        status=text["status"],
        request=json.loads(text["request"]),
        scope=text["scope"],
        idempotency_key=text.get("idempotency_key"),
        webhook=text.get("webhook"),
        created_at=float(text["created_at"]),
        started_at=number("started_at"),
        finished_at=number("finished_at"),
        step=int(text["step"]),
        total=int(text["total"]),
        error=json.loads(text["error"]) if "error" in text else None,
        images=tuple(ResultImage(**image) for image in json.loads(text.get("images", "[]"))),
        deliveries=tuple(WebhookDelivery(**json.loads(delivery)) for delivery in deliveries),
        owner=text.get("owner"),
        lease_expires_at=number("lease_expires_at"),
        attempts=int(text["attempts"]),
        cancel_requested=text["cancel_requested"] == "1",
    )
