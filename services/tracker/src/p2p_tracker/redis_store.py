"""The registry in Redis, shared by tracker replicas: the same rules as HolderRegistry, each
operation one Lua script, so it is atomic across replicas (a cap cannot be passed by two
replicas registering at once) and costs one round trip.

Keys, under a prefix (`p2p:`), with a holder written `host|port`:
  h:HOLDER      hash: o (owner `address|port`, or empty), n (files), np (files held in part),
                and `f:FILE_ID` -> kept flag, partial flag, then the entry `name\\nsize\\nchunk_size`
  seen          sorted set: holder -> last contact (`now`); expiry reads its stale end
  c:FILE_ID     set of complete holders;  p:FILE_ID  set of partial holders
  e:FILE_ID     hash: the entries kept for the file (at most MAX_NAMES_PER_FILE) -> `seq,count`,
                and `#`, the next seq (the first registered entry wins a tie)
  order         sorted set of every file id (score 0: lexicographic), for the paged list
  n:NAME        sorted set: the file ids under a name, scored -(complete * 2^26 + partial), so
                the first member is the best file (ties: the smallest id)
  stats         hash: holders, holdings (file registrations), complete, partial
  share         hash: `ADDRESS|h` and `ADDRESS|f`, each address's holders and file registrations
  lost          sorted set: file id -> when its last complete holder expired
  l:KEY         a lease (version 5 `claim`): `holder|until`
  key:NAME      a key every replica shares (connection ids without a swarm secret)
  nonce:HEX     the swarm secret's replay memory: one key per sealed datagram, expiring with it

Time is the tracker's `now`, passed in: a holder's expiry is decided by `seen`, not by Redis
key TTLs, so tests drive time and replicas agree. Growth is bounded by the same caps as in
memory (counted in `stats` and `share`), nonces expire on their own, `lost` is capped.
All keys are computed inside the scripts from the prefix: one Redis server (or a primary with
replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from typing import Any, Literal, NamedTuple
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from p2p_shared import registry as registry_module
from p2p_shared.messages import FileEntry
from p2p_shared.registry import HolderKey, NotRegistrant, Refused, RegistryFull, Sender

from .store import Found, Limits, Stats, StoreUnavailable

RANK = 1 << 26  # complete holders weigh this much more than partial ones in a name's ranking
EXPIRE_BATCH = 64  # holders one expiry script forgets, so no script holds Redis for long
# Seconds a tracker starting asks a registry that does not answer again: more than a Sentinel
# failover takes with the shipped settings (5 s down-after, an election).
START_WAIT = 15.0

_COMMON = r"""
local P = ARGV[1]
local stats, shares = P .. "stats", P .. "share"
local function num(v) return tonumber(v) or 0 end
local function address(owner, key)
  return string.match(owner ~= "" and owner or key, "^(.*)|")
end
local function name_of(entry) return string.match(entry, "^([^\n]*)") end
local function tally(n, np, sign)
  if n > np then redis.call("HINCRBY", stats, "complete", sign) end
  if np > 0 then redis.call("HINCRBY", stats, "partial", sign) end
end
local function share_add(addr, holders, files)
  local h = redis.call("HINCRBY", shares, addr .. "|h", holders)
  local f = redis.call("HINCRBY", shares, addr .. "|f", files)
  if h <= 0 then redis.call("HDEL", shares, addr .. "|h", addr .. "|f") end
  return f
end
-- The entries kept for a file: {entry, seq, count} in a list.
local function entries(fid)
  local all = redis.call("HGETALL", P .. "e:" .. fid)
  local out = {}
  for i = 1, #all, 2 do
    if all[i] ~= "#" then
      local seq, count = string.match(all[i + 1], "^(%d+),(%d+)$")
      out[#out + 1] = {all[i], tonumber(seq), tonumber(count)}
    end
  end
  return out
end
local function has_name(fid, name)
  for _, e in ipairs(entries(fid)) do
    if name_of(e[1]) == name then return true end
  end
  return false
end
-- The entry most holders registered (under `name`, if given), the first registered on a tie.
local function best_entry(fid, name)
  local best
  for _, e in ipairs(entries(fid)) do
    if name == nil or name_of(e[1]) == name then
      if best == nil or e[3] > best[3] or (e[3] == best[3] and e[2] < best[2]) then best = e end
    end
  end
  return best and best[1]
end
local function shown_entry(fid)
  local entry = best_entry(fid, nil)
  if entry then return entry end
  -- every kept entry's holders left: what a remaining holder registered
  local holder = redis.call("SRANDMEMBER", P .. "c:" .. fid) or redis.call("SRANDMEMBER", P .. "p:" .. fid)
  return string.sub(redis.call("HGET", P .. "h:" .. holder, "f:" .. fid), 3)
end
local function ranked(fid)
  local score = -(redis.call("SCARD", P .. "c:" .. fid) * 67108864 + redis.call("SCARD", P .. "p:" .. fid))
  local done = {}
  for _, e in ipairs(entries(fid)) do
    local name = name_of(e[1])
    if not done[name] then
      done[name] = true
      redis.call("ZADD", P .. "n:" .. name, score, fid)
    end
  end
end
local function drop_entry(fid, entry)
  local ek = P .. "e:" .. fid
  local seq, count = string.match(redis.call("HGET", ek, entry), "^(%d+),(%d+)$")
  if tonumber(count) > 1 then
    redis.call("HSET", ek, entry, seq .. "," .. (tonumber(count) - 1))
    return
  end
  redis.call("HDEL", ek, entry)
  local name = name_of(entry)
  if not has_name(fid, name) then redis.call("ZREM", P .. "n:" .. name, fid) end
end
-- Take one holding (`value`, the holder's `f:FILE_ID` field) off the file's indexes; the holder's
-- hash, counts and share are the caller's. Whether it was the file's last complete holder.
local function let_go(key, fid, value)
  local c, p = P .. "c:" .. fid, P .. "p:" .. fid
  local orphaned = false
  if string.sub(value, 2, 2) == "1" then
    redis.call("SREM", p, key)
  else
    redis.call("SREM", c, key)
    orphaned = redis.call("SCARD", c) == 0
  end
  if string.sub(value, 1, 1) == "1" then drop_entry(fid, string.sub(value, 3)) end
  if redis.call("SCARD", c) + redis.call("SCARD", p) > 0 then
    ranked(fid)
  else
    redis.call("ZREM", P .. "order", fid)
    redis.call("DEL", P .. "e:" .. fid)
  end
  return orphaned
end
-- Remove a holder from every index; the file ids it leaves without a complete holder, or nil.
local function forget(key)
  local hk = P .. "h:" .. key
  local all = redis.call("HGETALL", hk)
  if #all == 0 then
    redis.call("ZREM", P .. "seen", key)
    return nil
  end
  local record = {}
  for i = 1, #all, 2 do record[all[i]] = all[i + 1] end
  local n, np = num(record.n), num(record.np)
  tally(n, np, -1)
  share_add(address(record.o, key), -1, 0 - n)
  redis.call("HINCRBY", stats, "holders", -1)
  redis.call("HINCRBY", stats, "holdings", 0 - n)
  redis.call("ZREM", P .. "seen", key)
  redis.call("DEL", hk)
  local orphans = {}
  for field, value in pairs(record) do
    local fid = string.match(field, "^f:(.*)$")
    if fid and let_go(key, fid, value) then orphans[#orphans + 1] = fid end
  end
  return orphans
end
-- Whether `owner` may act on the holder at `hk` (an owner of "" is anybody: a library caller).
local function may_act(hk, key, owner, member)
  local current = redis.call("HGET", hk, "o")
  if not current or member or owner == "" or current == "" or current == owner then return true end
  return address(current, key) == address(owner, key)
end
"""

_REGISTER = _COMMON + r"""
local key, owner, member, now, partial = ARGV[2], ARGV[3], ARGV[4] == "1", ARGV[5], ARGV[6] == "1"
local max_holders, max_fph, max_files = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local max_hpa, max_fpa, max_names = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local hk = P .. "h:" .. key
if not may_act(hk, key, owner, member) then return {"refused", "not_registrant"} end
local result, n, np = "refreshed", 0, 0
if redis.call("EXISTS", hk) == 0 then
  if num(redis.call("HGET", stats, "holders")) >= max_holders then return {"refused", "holders"} end
  local addr = address(owner, key)
  if max_hpa > 0 and num(redis.call("HGET", shares, addr .. "|h")) >= max_hpa then
    return {"refused", "holders_per_address"}
  end
  share_add(addr, 1, 0)
  redis.call("HINCRBY", stats, "holders", 1)
  redis.call("HSET", hk, "o", owner, "n", 0, "np", 0)
  result = "new"
else
  n, np = num(redis.call("HGET", hk, "n")), num(redis.call("HGET", hk, "np"))
  tally(n, np, -1)
  local current = redis.call("HGET", hk, "o")
  if owner ~= "" and current ~= owner then  -- a member, or a new socket of its address, takes it over
    share_add(address(current, key), -1, 0 - n)
    share_add(address(owner, key), 1, n)
    redis.call("HSET", hk, "o", owner)
  end
end
redis.call("ZADD", P .. "seen", now, key)
local addr = address(redis.call("HGET", hk, "o"), key)

local function keep_entry(fid, entry)
  local ek = P .. "e:" .. fid
  local found = redis.call("HGET", ek, entry)
  if found then
    local seq, count = string.match(found, "^(%d+),(%d+)$")
    redis.call("HSET", ek, entry, seq .. "," .. (tonumber(count) + 1))
    return true
  end
  if #entries(fid) >= max_names then return false end  -- found by its id and the names kept
  redis.call("HSET", ek, entry, redis.call("HINCRBY", ek, "#", 1) .. ",1")
  return true
end

local refusal
for i = 13, #ARGV, 2 do
  local fid, entry = ARGV[i], ARGV[i + 1]
  local field = "f:" .. fid
  local held = redis.call("HGET", hk, field)
  local kept, changed = false, true
  if not held then
    if n >= max_fph then refusal = "files_per_holder"; break end
    if max_fpa > 0 and num(redis.call("HGET", shares, addr .. "|f")) >= max_fpa then refusal = "files_per_address"; break end
    if num(redis.call("HGET", stats, "holdings")) >= max_files then refusal = "files"; break end
    redis.call("HINCRBY", stats, "holdings", 1)
    share_add(addr, 0, 1)
    if not redis.call("ZSCORE", P .. "order", fid) then redis.call("ZADD", P .. "order", 0, fid) end
    kept = keep_entry(fid, entry)
    n = n + 1
  else
    entry = string.sub(held, 3)  -- the entry it registered first stays its entry
    local was_kept, was_partial = string.sub(held, 1, 1) == "1", string.sub(held, 2, 2) == "1"
    kept = was_kept or keep_entry(fid, entry)
    if was_kept and partial == was_partial then
      changed = false
    elseif was_partial then
      np = np - 1
    end
  end
  if changed then
    redis.call("HSET", hk, field, (kept and "1" or "0") .. (partial and "1" or "0") .. entry)
    if partial then
      np = np + 1
      redis.call("SREM", P .. "c:" .. fid, key)
      redis.call("SADD", P .. "p:" .. fid, key)
    else
      redis.call("SREM", P .. "p:" .. fid, key)
      redis.call("SADD", P .. "c:" .. fid, key)
      redis.call("ZREM", P .. "lost", fid)
    end
    ranked(fid)
  end
end
redis.call("HSET", hk, "n", n, "np", np)
tally(n, np, 1)
if refusal then return {"refused", refusal} end
return {result}
"""

_HEARTBEAT = _COMMON + r"""
local key, owner, member, now = ARGV[2], ARGV[3], ARGV[4] == "1", ARGV[5]
local hk = P .. "h:" .. key
if not may_act(hk, key, owner, member) then return -1 end
if redis.call("EXISTS", hk) == 0 then return 0 end
redis.call("ZADD", P .. "seen", now, key)
return 1
"""

_UNREGISTER = _COMMON + r"""
local key, owner, member = ARGV[2], ARGV[3], ARGV[4] == "1"
if not may_act(P .. "h:" .. key, key, owner, member) then return -1 end
return forget(key) and 1 or 0
"""

_DROP = _COMMON + r"""
local key, owner, member, now = ARGV[2], ARGV[3], ARGV[4] == "1", ARGV[5]
local hk = P .. "h:" .. key
if not may_act(hk, key, owner, member) then return -1 end
if redis.call("EXISTS", hk) == 0 then return 0 end
local n, np = num(redis.call("HGET", hk, "n")), num(redis.call("HGET", hk, "np"))
tally(n, np, -1)
local dropped = 0
for i = 6, #ARGV do
  local fid = ARGV[i]
  local value = redis.call("HGET", hk, "f:" .. fid)
  if value then  -- a file it does not hold (or a repeated id) is ignored
    redis.call("HDEL", hk, "f:" .. fid)
    if string.sub(value, 2, 2) == "1" then np = np - 1 end
    n, dropped = n - 1, dropped + 1
    let_go(key, fid, value)
  end
end
redis.call("HSET", hk, "n", n, "np", np)
tally(n, np, 1)
if dropped > 0 then
  share_add(address(redis.call("HGET", hk, "o"), key), 0, 0 - dropped)
  redis.call("HINCRBY", stats, "holdings", 0 - dropped)
end
redis.call("ZADD", P .. "seen", now, key)
return 1
"""

# A lease: `l:KEY` holds `holder|until`; Redis forgets it a while after it ran out (the key's TTL
# only bounds memory: whether it is live is decided by `now`, as everywhere else here).
_CLAIM = r"""
local P = ARGV[1]
local lk, holder, now, ttl, release = P .. "l:" .. ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == "1"
local current = redis.call("GET", lk)
if current then
  local who, untils = string.match(current, "^(.*)|([^|]*)$")
  local until_ = tonumber(untils)
  if until_ > now and who ~= holder then return {who, string.format("%.17g", until_ - now)} end
end
if release then
  redis.call("DEL", lk)
  return {"", "0"}
end
redis.call("SET", lk, holder .. "|" .. string.format("%.17g", now + ttl), "PX", math.floor(ttl * 2000) + 1000)
return {holder, string.format("%.17g", ttl)}
"""

_EXPIRE = _COMMON + r"""
local now, ttl, batch = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local lost_memory, max_lost = tonumber(ARGV[5]), tonumber(ARGV[6])
local lost = P .. "lost"
local stale = redis.call("ZRANGEBYSCORE", P .. "seen", "-inf", "(" .. string.format("%.17g", now - ttl),
  "LIMIT", 0, batch)
for _, key in ipairs(stale) do
  for _, fid in ipairs(forget(key) or {}) do redis.call("ZADD", lost, now, fid) end
end
redis.call("ZREMRANGEBYSCORE", lost, "-inf", "(" .. string.format("%.17g", now - lost_memory))
local extra = redis.call("ZCARD", lost) - max_lost
if extra > 0 then redis.call("ZREMRANGEBYRANK", lost, 0, extra - 1) end
return stale
"""

_LOOKUP = _COMMON + r"""
local by, target, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local fid, entry
if by == "id" then
  if not redis.call("ZSCORE", P .. "order", target) then return {} end
  fid = target
  entry = shown_entry(fid)
else
  local best = redis.call("ZRANGE", P .. "n:" .. target, 0, 0)
  if #best == 0 then return {} end
  fid = best[1]
  entry = best_entry(fid, target)
end
-- each list as one string, `host|port` lines: one reply to parse, not a hundred
return {fid, entry, table.concat(redis.call("SRANDMEMBER", P .. "c:" .. fid, limit + 1), "\n"),
  table.concat(redis.call("SRANDMEMBER", P .. "p:" .. fid, limit + 1), "\n")}
"""

_LIST = _COMMON + r"""
local after, limit = ARGV[2], tonumber(ARGV[3])
local low = after == "" and "-" or "(" .. after
local out = {redis.call("ZCARD", P .. "order")}
for _, fid in ipairs(redis.call("ZRANGEBYLEX", P .. "order", low, "+", "LIMIT", 0, limit)) do
  out[#out + 1] = {fid, shown_entry(fid), redis.call("SCARD", P .. "c:" .. fid), redis.call("SCARD", P .. "p:" .. fid)}
end
return out
"""

_STATS = r"""
local P = ARGV[1]
local s = redis.call("HMGET", P .. "stats", "holders", "holdings", "complete", "partial")
return {tonumber(s[1]) or 0, tonumber(s[2]) or 0, tonumber(s[3]) or 0, tonumber(s[4]) or 0,
  redis.call("ZCARD", P .. "order"), redis.call("ZCARD", P .. "lost")}
"""


def _holder(key: HolderKey) -> str:
    return f"{key[0]}|{key[1]}"


def _key(text: bytes) -> HolderKey:
    host, _, port = text.decode().rpartition("|")
    return host, int(port)


def _owner(sender: Sender | None) -> str:
    return "" if sender is None else f"{sender[0]}|{sender[1]}"


def _entry_text(entry: FileEntry) -> str:
    return f"{entry.name}\n{entry.size}\n{entry.chunk_size}"  # names hold no control character


def _entry(file_id: bytes, text: bytes) -> FileEntry:
    name, size, chunk_size = text.decode().split("\n")
    # Validated when it was registered.
    return FileEntry.model_construct(file_id=file_id.decode(), name=name, size=int(size), chunk_size=int(chunk_size))


class _Plan(NamedTuple):
    """One store operation as a script call: what to send, and how to read the reply (which may
    raise registry.Refused)."""

    script: str
    args: list
    read: Callable[[Any], Any]


class _Plans:
    """The store's operations, each planned as a script call, not run: a batch of them is run
    in one pipeline (RedisStore.run)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def register(self, key, files, now, partial=False, sender=None, member=False) -> _Plan:
        lim = self.store.limits
        args = [
            _holder(key), _owner(sender), int(member), repr(float(now)), int(partial),
            lim.max_holders, lim.max_files_per_holder, lim.max_files,
            lim.max_holders_per_address or 0, lim.max_files_per_address or 0, registry_module.MAX_NAMES_PER_FILE,
        ]
        for entry in files:
            args += [entry.file_id, _entry_text(entry)]

        def read(reply) -> Literal["new", "refreshed"]:
            if reply[0] == b"refused":
                reason = reply[1].decode()
                if reason == "not_registrant":
                    raise NotRegistrant(key)
                raise RegistryFull(reason, _FULL[reason].format(lim=lim))
            return reply[0].decode()

        return _Plan("register", args, read)

    def heartbeat(self, key, now, sender=None, member=False) -> _Plan:
        return _Plan("heartbeat", [_holder(key), _owner(sender), int(member), repr(float(now))], _known(key))

    def unregister(self, key, sender=None, member=False) -> _Plan:
        return _Plan("unregister", [_holder(key), _owner(sender), int(member)], _known(key))

    def drop(self, key, file_ids, now, sender=None, member=False) -> _Plan:
        args = [_holder(key), _owner(sender), int(member), repr(float(now)), *file_ids]
        return _Plan("drop", args, _known(key))

    def claim(self, key, holder, now, release=False) -> _Plan:
        def read(reply) -> tuple[HolderKey | None, float]:
            who, left = reply
            return (_key(who) if who else None), float(left)

        args = [key, _holder(holder), repr(float(now)), repr(float(self.store.limits.lease_ttl)), int(release)]
        return _Plan("claim", args, read)

    def lookup(self, name=None, file_id=None, limit=50, exclude=None) -> _Plan:
        by, target = ("id", file_id) if file_id is not None else ("name", name or "")
        pick = self.store._pick

        def read(reply) -> Found:
            if not reply:
                return Found(None, [], [])
            fid, text, complete, partial = reply
            return Found(_entry(fid, text), pick(complete, limit, exclude), pick(partial, limit, exclude))

        return _Plan("lookup", [by, target, limit], read)

    def list_files(self, after=None, limit=None) -> _Plan:
        def read(reply):
            total, *rows = reply
            return [(_entry(fid, text), complete, partial) for fid, text, complete, partial in rows], total

        return _Plan("list", [after or "", -1 if limit is None else limit], read)


def _known(key: HolderKey) -> Callable[[int], bool]:
    def read(known: int) -> bool:
        if known < 0:
            raise NotRegistrant(key)
        return known == 1

    return read


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


class SentinelAddress(NamedTuple):
    """Where Sentinel is and what it watches: from
    `redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]`
    (`rediss+sentinel://`: TLS to the Redis servers). The password is the Redis servers'; the
    sentinels are asked without one (give them none, or set `sentinel auth-pass` for Redis)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def sentinel_address(url: str) -> SentinelAddress:
    """Parse a redis+sentinel:// URL; ValueError says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL: {parts.scheme}://")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    sentinels = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), "26379"
        host = host.strip("[]")  # an IPv6 address in brackets
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a sentinel is HOST:PORT, not {item!r}")
        sentinels.append((host, int(port)))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("the path is /MASTER_NAME or /MASTER_NAME/DB")
    return SentinelAddress(
        tuple(sentinels), path[0], int(path[1]) if len(path) == 2 else 0,
        unquote(username) or None, unquote(password) or None, parts.scheme == "rediss+sentinel",
    )


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (the primary asked of the sentinels at each new connection, connections
    to a demoted primary dropped) with the blocking pool's bound: at most `max_connections`,
    a caller waits up to `timeout` for one instead of failing at once."""


class _Sentinels(Sentinel):
    """redis-py's Sentinel manager, its "no primary" error one short line (redis-py's names
    every client it asked, in full)."""

    def __init__(self, address: SentinelAddress, **options) -> None:
        super().__init__(address.sentinels, **options)
        self.where = ", ".join(f"{host}:{port}" for host, port in address.sentinels)

    async def discover_master(self, service_name: str):
        try:
            return await super().discover_master(service_name)
        except MasterNotFoundError:
            raise MasterNotFoundError(f"no sentinel at {self.where} names a primary for {service_name!r}") from None


def _sentinel_pool(address: SentinelAddress, options: dict) -> SentinelConnectionPool:
    # Each sentinel asked once (the next one on a failure), not retried with a backoff.
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")} | {"retry": Retry(NoBackoff(), 0)}
    manager = _Sentinels(address, sentinel_kwargs=sentinel_options)
    credentials = {"username": address.username, "password": address.password, "db": address.db, "ssl": address.tls}
    return _BlockingSentinelPool(address.master, manager, **options, **credentials)


class RedisStore:
    """The registry in Redis (see the module's note); every call is bounded by `timeout`."""

    shared = True
    immediate = False

    def __init__(
        self, client: redis.Redis, limits: Limits, timeout: float, rng: random.Random | None = None, prefix: str = "p2p:"
    ) -> None:
        self.client = client
        self.limits = limits
        self.timeout = timeout
        self.rng = rng or random.Random()
        self.prefix = prefix
        self._stats = Stats()
        self._plans = _Plans(self)
        self._sources = {
            "register": _REGISTER, "heartbeat": _HEARTBEAT, "unregister": _UNREGISTER, "drop": _DROP, "claim": _CLAIM,
            "expire": _EXPIRE, "lookup": _LOOKUP, "list": _LIST, "stats": _STATS,
        }
        self._sha = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in self._sources.items()}

    @classmethod
    def from_url(
        cls, url: str, limits: Limits, timeout: float = 0.5, rng: random.Random | None = None, prefix: str = "p2p:",
        max_connections: int = 64,
    ) -> RedisStore:
        """A store on the Redis at `url` (redis://, rediss://, unix://, or redis+sentinel:// for a
        primary that Sentinel watches and replaces: `sentinel_address`), not contacted yet."""
        # A slow store is answered `unavailable`, not waited for; a connection that broke (a
        # restarted Redis, a primary replaced by Sentinel) is replaced at once, once.
        retry = Retry(NoBackoff(), 1, supported_errors=(ConnectionError,))
        options = dict(max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=retry)
        try:
            if urlsplit(url).scheme in SENTINEL_SCHEMES:
                pool = _sentinel_pool(sentinel_address(url), options)
            else:
                pool = redis.BlockingConnectionPool.from_url(url, **options)
        except ValueError as exc:
            raise StoreUnavailable("connection", f"bad Redis URL: {exc}") from None
        return cls(redis.Redis(connection_pool=pool, retry=retry), limits, timeout, rng, prefix)

    @classmethod
    async def connect(cls, url: str, limits: Limits, timeout: float = 0.5, wait: float = START_WAIT, **options) -> RedisStore:
        """A store on the Redis at `url`, checked with a PING, asked again for up to `wait`
        seconds while it does not answer (a Redis restarting, a Sentinel failover under way: a
        replica started then would otherwise exit, and stay down where nothing restarts it)."""
        store = cls.from_url(url, limits, timeout, **options)
        deadline = asyncio.get_running_loop().time() + wait
        try:
            while True:
                try:
                    await store._call(store.client.ping())
                    return store
                except StoreUnavailable:
                    if asyncio.get_running_loop().time() + 0.5 > deadline:
                        raise
                await asyncio.sleep(0.5)
        except BaseException:
            await store.close()
            raise

    async def _call(self, awaitable):
        """Commands bounded by the timeout; Redis errors mapped to StoreUnavailable."""
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except (TimeoutError, RedisTimeout):
            raise StoreUnavailable("timeout", f"registry store gave no answer within {self.timeout:g}s") from None
        except ResponseError:
            raise  # a bug of ours (a script error), not the store being away
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("connection", f"registry store unreachable: {exc}") from None

    async def _scripts(self, calls: list[tuple[str, list]]) -> list:
        """Run scripts in one pipeline (one round trip); a script the server does not know yet
        (a Redis restarted) is sent again with its source, which it then keeps."""
        replies = await self._call(self._pipeline([("EVALSHA", self._sha[name], args) for name, args in calls]))
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            again = await self._call(self._pipeline([("EVAL", self._sources[calls[i][0]], calls[i][1]) for i in missing]))
            for i, reply in zip(missing, again):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _pipeline(self, commands: list[tuple[str, str, list]]) -> list:
        pipe = self.client.pipeline(transaction=False)
        for command, script, args in commands:
            pipe.execute_command(command, script, 0, self.prefix, *args)
        return await pipe.execute(raise_on_error=False)

    async def _script(self, name: str, *args) -> Any:
        [reply] = await self._scripts([(name, list(args))])
        return reply

    async def _planned(self, plan: _Plan) -> Any:
        return plan.read(await self._script(plan.script, *plan.args))

    async def run(self, calls) -> list:
        plans = [call(self._plans) for call in calls]
        replies = await self._scripts([(plan.script, plan.args) for plan in plans])
        outcomes = []
        for plan, reply in zip(plans, replies):
            try:
                outcomes.append(plan.read(reply))
            except Refused as exc:
                outcomes.append(exc)
        return outcomes

    async def register(self, key, files, now, partial=False, sender=None, member=False) -> Literal["new", "refreshed"]:
        return await self._planned(self._plans.register(key, files, now, partial, sender, member))

    async def heartbeat(self, key, now, sender=None, member=False) -> bool:
        return await self._planned(self._plans.heartbeat(key, now, sender, member))

    async def unregister(self, key, sender=None, member=False) -> bool:
        return await self._planned(self._plans.unregister(key, sender, member))

    async def drop(self, key, file_ids, now, sender=None, member=False) -> bool:
        return await self._planned(self._plans.drop(key, file_ids, now, sender, member))

    async def claim(self, key, holder, now, release=False) -> tuple[HolderKey | None, float]:
        return await self._planned(self._plans.claim(key, holder, now, release))

    async def lookup(self, name=None, file_id=None, limit=50, exclude=None) -> Found:
        return await self._planned(self._plans.lookup(name, file_id, limit, exclude))

    async def list_files(self, after=None, limit=None):
        return await self._planned(self._plans.list_files(after, limit))

    def _pick(self, members: bytes, limit: int, exclude: HolderKey | None) -> list[HolderKey]:
        keys = [_key(m) for m in members.split(b"\n")] if members else []
        if exclude in keys:
            keys.remove(exclude)
        self.rng.shuffle(keys)  # SRANDMEMBER's order is not random enough
        return keys[:limit]

    async def expire(self, now) -> list[HolderKey]:
        expired: list[HolderKey] = []
        while True:
            batch = await self._script(
                "expire", repr(float(now)), repr(float(self.limits.ttl)), EXPIRE_BATCH,
                registry_module.LOST_FILE_MEMORY, registry_module.MAX_LOST_FILES,
            )
            expired += [_key(k) for k in batch]
            if len(batch) < EXPIRE_BATCH:
                return expired

    async def refresh_stats(self) -> Stats:
        self._stats = Stats(*await self._script("stats"))
        return self._stats

    @property
    def stats(self) -> Stats:
        return self._stats

    async def shared_key(self, name: str, candidate: bytes) -> bytes:
        where = f"{self.prefix}key:{name}"
        await self._call(self.client.set(where, candidate, nx=True))
        return await self._call(self.client.get(where))

    async def remember_nonces(self, nonces: list[bytes], seconds: float) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        for nonce in nonces:
            pipe.set(f"{self.prefix}nonce:{nonce.hex()}", b"", nx=True, px=max(1, int(seconds * 1000)))
        return [bool(fresh) for fresh in await self._call(pipe.execute())]

    async def close(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()


_FULL = {
    "holders": "registry holds its maximum of {lim.max_holders} holders",
    "holders_per_address": "one address may register at most {lim.max_holders_per_address} holders",
    "files": "registry holds its maximum of {lim.max_files} file registrations",
    "files_per_address": "one address may register at most {lim.max_files_per_address} files",
    "files_per_holder": "a holder may register at most {lim.max_files_per_holder} files",
}
