//! The Lua scripts that make the cluster's decisions atomic in Redis. Each
//! is loaded once per connection (`SCRIPT LOAD`) and called with
//! `EVALSHA`. Keys are passed in `KEYS`; channel names (not keys) are built
//! from the prefix in `ARGV`.
//!
//! Atomicity is what removes the races: a `send` and a user's `attach` are
//! ordered by Redis, so either the send sees the new node in the user's
//! presence set (and publishes to it), or the attach sees the message in
//! the mailbox Stream (and delivers it).

/// The scripts, in the order `Script` indexes them.
pub const ALL: [&str; 5] = [SEND_USER, ATTACH, PUBLISH_GROUP, ANYCAST, STORE];

/// A script by index into the loaded SHAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    SendUser = 0,
    Attach = 1,
    PublishGroup = 2,
    Anycast = 3,
    Store = 4,
}

/// `send` to a user, cluster-wide.
///
/// KEYS: presence set, mailbox Stream.
/// ARGV: own node id, node channel prefix, rkyv `ClusterMsg` body, rkyv
/// `StoredMsg`, `1` to keep it in the Stream whatever happens (`ack:true`),
/// `1` if this node has live connections of the user, the Stream's bound
/// (`mailbox_max_msgs`).
///
/// Publishes to every other node in the presence set (dropping nodes that
/// have no subscriber any more: they are gone). Stores the message in the
/// Stream when asked to, or when nobody at all has the user. A full Stream
/// gives up its oldest entry, returned so the caller can dead-letter it.
///
/// Returns `{nodes reached, stream entry id or "", evicted StoredMsg or ""}`.
pub const SEND_USER: &str = r#"
local evicted = ''
local id = ''
local function store()
  if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[7]) then
    local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
    if #oldest > 0 then
      evicted = oldest[1][2][2]
      redis.call('XDEL', KEYS[2], oldest[1][1])
    end
  end
  id = redis.call('XADD', KEYS[2], '*', 'm', ARGV[4])
end
if ARGV[5] == '1' then store() end
local reached = 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[1] then
    if redis.call('PUBLISH', ARGV[2] .. node, string.char(#id) .. id .. ARGV[3]) > 0 then
      reached = reached + 1
    else
      redis.call('SREM', KEYS[1], node)
    end
  end
end
if id == '' and reached == 0 and ARGV[6] ~= '1' then store() end
return {reached, id, evicted}
"#;

/// A connection of a user attached to a node.
///
/// KEYS: presence set, mailbox Stream. ARGV: node id, presence TTL (ms),
/// most entries to return.
///
/// Returns the Stream's entries, oldest first (`XRANGE` form).
pub const ATTACH: &str = r#"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', ARGV[3])
"#;

/// `publish` to a group, cluster-wide: one envelope to every other node
/// with members (nodes without a subscriber are dropped from the summary).
///
/// KEYS: group summary. ARGV: own node id, node channel prefix, payload
/// (with its prefix byte). Returns the number of nodes reached.
pub const PUBLISH_GROUP: &str = r#"
local fields = redis.call('HGETALL', KEYS[1])
local reached = 0
for i = 1, #fields, 2 do
  local node = fields[i]
  if node ~= ARGV[1] and tonumber(string.match(fields[i + 1], '^(%d+)') or '0') > 0 then
    if redis.call('PUBLISH', ARGV[2] .. node, ARGV[3]) > 0 then
      reached = reached + 1
    else
      redis.call('HDEL', KEYS[1], node)
    end
  end
end
return reached
"#;

/// `anycast` to a group: picks the node by the group's cluster-wide
/// strategy, then publishes the envelope to it (or tells the caller it is
/// itself); the node picks the member by the same strategy among its own.
///
/// - `round_robin`: smooth weighted round robin over nodes, each weighted
///   by its member count, so every member gets an equal share;
/// - `weighted`: the same, each node weighted by its members' weight sum;
/// - `least_connections`: the node with the fewest outstanding anycasts
///   per member (nodes report theirs), ties in turn.
///
/// The counters live in the group's schedule hash, shared by every node,
/// so picks from all nodes interleave as one sequence.
///
/// KEYS: group summary, schedule hash, strategy key. ARGV: own node id,
/// node channel prefix, payload. Returns `{"self" | "remote" | "none",
/// strategy name}`.
pub const ANYCAST: &str = r#"
local strategy = redis.call('GET', KEYS[3]) or 'round_robin'
local fields = redis.call('HGETALL', KEYS[1])
local nodes = {}
for i = 1, #fields, 2 do
  local count, weight = string.match(fields[i + 1], '^(%d+) (%d+)')
  count = tonumber(count or '0')
  if count > 0 then
    table.insert(nodes, {fields[i], count, tonumber(weight or '0')})
  end
end
while #nodes > 0 do
  local best = nil
  if strategy == 'least_connections' then
    local turn = redis.call('HINCRBY', KEYS[2], 'turn', 1)
    local low = nil
    local ties = {}
    for i, n in ipairs(nodes) do
      local load = tonumber(redis.call('HGET', KEYS[2], 'o:' .. n[1]) or '0') / n[2]
      if low == nil or load < low then
        low = load
        ties = {i}
      elseif load == low then
        table.insert(ties, i)
      end
    end
    best = ties[(turn % #ties) + 1]
    redis.call('HINCRBY', KEYS[2], 'o:' .. nodes[best][1], 1)
  else
    local total = 0
    local current = {}
    for i, n in ipairs(nodes) do
      local w = n[2]
      if strategy == 'weighted' and n[3] > 0 then w = n[3] end
      total = total + w
      current[i] = tonumber(redis.call('HGET', KEYS[2], 'c:' .. n[1]) or '0') + w
      if best == nil or current[i] > current[best] then best = i end
    end
    current[best] = current[best] - total
    for i, n in ipairs(nodes) do
      redis.call('HSET', KEYS[2], 'c:' .. n[1], current[i])
    end
  end
  local node = nodes[best][1]
  if node == ARGV[1] then return {'self', strategy} end
  if redis.call('PUBLISH', ARGV[2] .. node, ARGV[3]) > 0 then return {'remote', strategy} end
  redis.call('HDEL', KEYS[1], node)
  table.remove(nodes, best)
end
return {'none', strategy}
"#;

/// Keeps a message in a user's mailbox Stream (bounded: a full Stream
/// gives up its oldest entry, returned to be dead-lettered).
///
/// KEYS: mailbox Stream. ARGV: rkyv `StoredMsg`, the bound.
/// Returns `{entry id, evicted StoredMsg or ""}`.
pub const STORE: &str = r#"
local evicted = ''
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #oldest > 0 then
    evicted = oldest[1][2][2]
    redis.call('XDEL', KEYS[1], oldest[1][1])
  end
end
return {redis.call('XADD', KEYS[1], '*', 'm', ARGV[1]), evicted}
"#;
