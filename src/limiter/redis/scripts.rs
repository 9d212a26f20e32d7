//! The Lua scripts of the Redis limiter. Every script touches the keys of one mailbox only,
//! and those keys share the mailbox as their hash tag (`<prefix>lease:{alice@contoso.com}`,
//! `<prefix>count:{…}`, `<prefix>blocked:{…}`), so each runs atomically on the one node that
//! holds them, in a single server as in Redis Cluster. Time is Redis's own (`TIME`), the same
//! for every MTA.
//!
//! The counters of a mailbox are one hash: a field per non-empty bucket, `m:<second>` (messages,
//! minute window), `r:<second / 1440>` (recipients, day window), `e:`/`i:<minute>` (external
//! and internal recipients, hour windows); a window counts its current bucket and the 59 before
//! (see [`crate::limiter::counters`], whose [`judge`](crate::limiter::counters::judge) the
//! commit script mirrors step for step). Stale fields are dropped when a message is counted;
//! the hash expires a day after the last one.

/// The prelude every counting script starts with: the time and the usage of the counts hash.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local secs = tonumber(t[1])
local now = secs * 1000 + math.floor(tonumber(t[2]) / 1000)
local function usage(key)
  local f = redis.call('HGETALL', key)
  local hour = math.floor(secs / 60)
  local first = { m = secs - 59, r = math.floor(secs / 1440) - 59, e = hour - 59, i = hour - 59 }
  local u = { m = 0, r = 0, e = 0, i = 0 }
  local stale = {}
  for k = 1, #f, 2 do
    local w = string.sub(f[k], 1, 1)
    local slot = tonumber(string.sub(f[k], 3))
    if first[w] and slot then
      if slot < first[w] then
        stale[#stale + 1] = f[k]
      else
        u[w] = u[w] + tonumber(f[k + 1])
      end
    end
  end
  return u, stale
end
";

/// At the start of a message (MAIL, or a transaction's first request): refuse a restricted
/// sender, defer over `messages_per_minute`, and take a session lease when asked, all at once.
/// KEYS: lease, count, blocked. ARGV: take a lease (`1`/`0`), the session limit, the lease TTL
/// (ms), the lease member, messages_per_minute. Returns `{code, in_use, entry, m, r, e, i}`;
/// code 0 open, 1 over the session limit, 2 restricted (entry = its JSON), 3 message rate.
pub fn open() -> String {
    format!(
        "{PRELUDE}{}",
        r"
local b = redis.call('GET', KEYS[3])
if b then return {2, 0, b, 0, 0, 0, 0} end
local u = usage(KEYS[2])
local mpm = tonumber(ARGV[5])
if mpm > 0 and u.m >= mpm then return {3, 0, '', u.m, u.r, u.e, u.i} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if ARGV[1] == '1' then
  if n >= tonumber(ARGV[2]) then return {1, n, '', u.m, u.r, u.e, u.i} end
  local ttl = tonumber(ARGV[3])
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ttl)
  n = n + 1
end
return {0, n, '', u.m, u.r, u.e, u.i}
"
    )
}

/// At the end of a message: judge it (restricted, message rate, recipients per day, outbound
/// spam thresholds), block the sender when a blocking threshold is reached, otherwise count it;
/// and give the transaction's lease back when asked (one round trip for the whole step).
/// KEYS: lease, count, blocked. ARGV: messages_per_minute, recipients_per_day, external per
/// hour, internal per hour, spam per day, action, external recipients, internal recipients,
/// mailbox, the lease member to release (empty: none). Returns `{code, entry, m, r, e, i, secs,
/// threshold, count, limit}` with the usage after the message when counted; code 0 counted,
/// 2 restricted before, 3 message rate, 4 recipients per day, 5 restricted now (entry = JSON).
pub fn commit() -> String {
    format!(
        "{PRELUDE}{}",
        r"
local function release()
  if ARGV[10] ~= '' then
    redis.call('ZREM', KEYS[1], ARGV[10])
  end
end
local b = redis.call('GET', KEYS[3])
if b then
  release()
  return {2, b, 0, 0, 0, 0, secs, '', 0, 0}
end
local u, stale = usage(KEYS[2])
local ext = tonumber(ARGV[7])
local int = tonumber(ARGV[8])
local total = ext + int
local mpm = tonumber(ARGV[1])
if mpm > 0 and u.m >= mpm then
  release()
  return {3, '', u.m, u.r, u.e, u.i, secs, '', 0, mpm}
end
local day = u.r + total
local rpd = tonumber(ARGV[2])
if rpd > 0 and day > rpd then
  release()
  return {4, '', u.m, u.r, u.e, u.i, secs, '', day, rpd}
end
local eh = tonumber(ARGV[3])
local ih = tonumber(ARGV[4])
local sd = tonumber(ARGV[5])
local which, count, limit = '', 0, 0
if eh > 0 and u.e + ext > eh then
  which, count, limit = 'recipient_limit_external_per_hour', u.e + ext, eh
elseif ih > 0 and u.i + int > ih then
  which, count, limit = 'recipient_limit_internal_per_hour', u.i + int, ih
elseif sd > 0 and day > sd then
  which, count, limit = 'recipient_limit_per_day', day, sd
end
if which ~= '' and ARGV[6] ~= 'alert' then
  local untl = 0
  if ARGV[6] == 'block_user_for_today' then untl = (math.floor(secs / 86400) + 1) * 86400 end
  local entry = cjson.encode({ mailbox = ARGV[9], since = secs, ['until'] = untl,
    threshold = which, count = count, limit = limit, action = ARGV[6] })
  redis.call('SET', KEYS[3], entry)
  if untl > 0 then redis.call('EXPIREAT', KEYS[3], untl) end
  release()
  return {5, entry, u.m, u.r, u.e, u.i, secs, which, count, limit}
end
if #stale > 0 then redis.call('HDEL', KEYS[2], unpack(stale)) end
redis.call('HINCRBY', KEYS[2], 'm:' .. secs, 1)
if total > 0 then redis.call('HINCRBY', KEYS[2], 'r:' .. math.floor(secs / 1440), total) end
if ext > 0 then redis.call('HINCRBY', KEYS[2], 'e:' .. math.floor(secs / 60), ext) end
if int > 0 then redis.call('HINCRBY', KEYS[2], 'i:' .. math.floor(secs / 60), int) end
redis.call('PEXPIRE', KEYS[2], 87840000)
release()
return {0, '', u.m + 1, day, u.e + ext, u.i + int, secs, which, count, limit}
"
    )
}

/// Takes back a message counted at ARGV[1] (seconds) with ARGV[2] external and ARGV[3]
/// internal recipients: it was not accepted after all. KEYS: count.
pub const UNCOMMIT: &str = r"
local secs = tonumber(ARGV[1])
local ext = tonumber(ARGV[2])
local int = tonumber(ARGV[3])
local function sub(field, n)
  if n > 0 and redis.call('HINCRBY', KEYS[1], field, -n) <= 0 then
    redis.call('HDEL', KEYS[1], field)
  end
end
sub('m:' .. secs, 1)
sub('r:' .. math.floor(secs / 1440), ext + int)
sub('e:' .. math.floor(secs / 60), ext)
sub('i:' .. math.floor(secs / 60), int)
return 1
";

/// What `mailbox get` shows: sessions, the block, the usage. KEYS: lease, count, blocked.
/// Returns `{in_use, entry, m, r, e, i}`.
pub fn usage() -> String {
    format!(
        "{PRELUDE}{}",
        r"
local n = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local b = redis.call('GET', KEYS[3]) or ''
local u = usage(KEYS[2])
return {n, b, u.m, u.r, u.e, u.i}
"
    )
}

/// Releases a restricted sender: returns its entry (nil when it was not blocked). KEYS: blocked.
pub const RELEASE_SENDER: &str = r"
local b = redis.call('GET', KEYS[1])
if b then redis.call('DEL', KEYS[1]) end
return b
";
