-- poc-routing: send /join to the one instance that owns the client id.
--
-- Runs only on the /join route (envoy.yaml names it per route). For each request it:
--   1. finds the single client_id in the query, with the server's rules (missing, empty,
--      repeated, over 256 bytes, not UTF-8 or holding control characters: 400 with the server's
--      error code);
--   2. finds the owner, by one of two flows chosen by the route's metadata
--      (filter_metadata["envoy.filters.http.lua"].flow):
--        "resolver" (the seed's flow, the default): asks GET /where?client_id=<the id as the
--          client encoded it> on every request, so the server decodes the id the same way for
--          /where and /join;
--        "placement": computes the owner here, with the placement rule the servers publish at
--          GET /placement, fetched through the resolver cluster and cached per worker for
--          PLACEMENT_TTL_S seconds. No extra hop per request. If the rule cannot be fetched,
--          this request falls back to the resolver flow;
--   3. checks the hostport, records it as dynamic metadata poc.routing/owner (the RBAC guard in
--      envoy.yaml requires it), sets :authority to it, so the dynamic forward proxy dials
--      exactly that instance, and stamps the placement epoch it routed by in x-poc-epoch
--      (replacing any value a client sent).
-- The servers stay the single source of truth: the owner serves a join only if it owns the id
-- under the stamped epoch, and that epoch is its current one or the one just before it (inside
-- the transition window after a member change). A cached rule is at most PLACEMENT_TTL_S old;
-- while it is stale the owner refuses with 421 rather than serve a join it does not own.
-- Fail closed: every error answers 4xx/5xx JSON, and a failure of this script itself answers 500.
-- The request never goes on with the authority the client sent.

local bit = require("bit")

local MAX_ID_BYTES = 256
local RESOLVER_CLUSTER = "resolver"
-- /where answers in about a millisecond; an instance that takes longer is hung or overloaded.
local RESOLVER_TIMEOUT_MS = 500
-- A replica that just died or hung stays in the resolver cluster until a health check (or
-- outlier detection) notices it; one more attempt lands on another replica.
local RESOLVER_ATTEMPTS = 2
local PLACEMENT_TTL_S = 2
local METADATA_NAMESPACE = "poc.routing"
local EPOCH_HEADER = "x-poc-epoch"

local M = {}

---------------------------------------------------------------------------------------------
-- Placement: the same rule as the Rust placement crate, checked against the same vectors
-- (lua/spec/placement_spec.lua). 64-bit arithmetic uses LuaJIT's uint64 cdata.

-- 32-bit FNV-1a of a byte string, as a number in 0 .. 2^32-1.
function M.fnv1a32(s)
  local h = 0x811c9dc5
  for i = 1, #s do
    h = bit.bxor(h, s:byte(i))
    -- h * 16777619 (= 2^24 + 403) mod 2^32, without leaving the exact range of doubles.
    h = bit.tobit(bit.lshift(h, 24) + h * 403)
  end
  return h < 0 and h + 4294967296 or h
end

-- 64-bit FNV-1a of a byte string, as a uint64 cdata.
function M.fnv1a64(s)
  local h = 0xcbf29ce484222325ULL
  for i = 1, #s do
    h = bit.bxor(h, s:byte(i)) * 0x100000001b3ULL
  end
  return h
end

-- Jump consistent hash (Lamping & Veach 2014) of a uint64 key into 0 .. buckets-1.
function M.jump(key, buckets)
  key = key + 0ULL
  local b, j = -1, 0
  while j < buckets do
    b = j
    key = key * 2862933555777941757ULL + 1ULL
    j = math.floor((b + 1) * (2147483648 / tonumber(bit.rshift(key, 33) + 1ULL)))
  end
  return b
end

-- A decimal string (ASCII digits, leading zeros allowed) as a uint64, or nil if it is not one
-- or exceeds 2^64-1.
function M.parse_decimal_u64(s)
  if #s == 0 or s:find("[^0-9]") then
    return nil
  end
  local max_div10 = 1844674407370955161ULL -- floor((2^64-1) / 10)
  local v = 0ULL
  for i = 1, #s do
    local d = s:byte(i) - 48
    if v > max_div10 or (v == max_div10 and d > 5) then
      return nil
    end
    v = v * 10ULL + d
  end
  return v
end

-- The owner's index for a decoded, valid id, or nil if the id does not fit the mode: the member
-- at the position the mode picks in config.members (ascending instance indexes).
function M.index(config, id)
  local members = config.members
  local n = #members
  local slot
  if config.mode == "hash" then
    slot = M.fnv1a32(id) % n
  elseif config.mode == "numeric" then
    local v = M.parse_decimal_u64(id)
    if not v then
      return nil
    end
    slot = tonumber(v % (n + 0ULL))
  elseif config.mode == "jump" then
    slot = M.jump(M.fnv1a64(id), n)
  else
    return nil
  end
  return members[slot + 1]
end

-- base, base+1, ..., base+replicas-1: the member list of a contiguous deployment.
function M.contiguous(base, replicas)
  local members = {}
  for i = 1, replicas do
    members[i] = base + i - 1
  end
  return members
end

function M.hostport(config, index)
  return string.format("%s-%d%s:%d", config.prefix, index, config.suffix, config.port)
end

-- M.hostport, remembered per rule (a rule has at most `replicas` distinct hostports).
local function cached_hostport(config, index)
  local names = config.hostports
  if not names then
    names = {}
    config.hostports = names
  end
  local hostport = names[index]
  if not hostport then
    hostport = M.hostport(config, index)
    names[index] = hostport
  end
  return hostport
end

---------------------------------------------------------------------------------------------
-- Ids.

-- JSON string literal for error bodies.
function M.json_string(s)
  s = tostring(s)
  s = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end)
  return '"' .. s .. '"'
end

-- application/x-www-form-urlencoded decoding: '+' is a space, %XX a byte; a '%' not followed
-- by two hex digits stays as it is. The same rule as the Rust placement crate.
local function hex_byte(hex)
  return string.char(tonumber(hex, 16))
end

function M.form_decode(s)
  if not s:find("[%%+]") then
    return s -- the common case: nothing to decode
  end
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", hex_byte))
end

-- Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
function M.valid_utf8(s)
  if not s:find("[\128-\255]") then
    return true -- ASCII
  end
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local len, min
    if c < 0x80 then
      len, min = 1, 0
    elseif c >= 0xC2 and c <= 0xDF then
      len, min = 2, 0x80
    elseif c >= 0xE0 and c <= 0xEF then
      len, min = 3, 0x800
    elseif c >= 0xF0 and c <= 0xF4 then
      len, min = 4, 0x10000
    else
      return false
    end
    if i + len - 1 > n then
      return false
    end
    local cp = len == 1 and c or bit.band(c, bit.rshift(0xFF, len + 1))
    for k = i + 1, i + len - 1 do
      local cc = s:byte(k)
      if bit.band(cc, 0xC0) ~= 0x80 then
        return false
      end
      cp = cp * 64 + bit.band(cc, 0x3F)
    end
    if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then
      return false
    end
    i = i + len
  end
  return true
end

-- Returns the raw (still encoded) client_id value and its decoded bytes, or nil, code, message.
function M.extract_client_id(path)
  local query = path:match("%?(.*)$")
  local found
  if query then
    for pair in query:gmatch("[^&]+") do
      local name, value = pair:match("^([^=]*)=(.*)$")
      if not name then
        name, value = pair, ""
      end
      if name == "client_id" or (name:find("[%%+]") and M.form_decode(name) == "client_id") then
        if found then
          return nil, "duplicate_client_id", "client_id is given more than once; exactly one is allowed"
        end
        found = value
      end
    end
  end
  if not found then
    return nil, "missing_client_id", "the query has no client_id parameter"
  end
  local id = M.form_decode(found)
  if #id == 0 then
    return nil, "invalid_client_id", "client_id is empty"
  end
  if #id > MAX_ID_BYTES then
    return nil, "invalid_client_id",
      "client_id is " .. #id .. " bytes long; at most " .. MAX_ID_BYTES .. " are allowed"
  end
  local control = id:find("[%z\1-\31\127]")
  if control then
    return nil, "invalid_client_id", "client_id contains a control character at byte " .. (control - 1)
  end
  if not M.valid_utf8(id) then
    return nil, "invalid_client_id", "client_id is not valid UTF-8 after percent-decoding"
  end
  return found, id
end

---------------------------------------------------------------------------------------------
-- Answers from the resolver cluster.

local function dns_label(s)
  return type(s) == "string" and #s >= 1 and #s <= 63 and s:find("^[%w%-]+$") ~= nil
    and s:sub(1, 1) ~= "-" and s:sub(-1) ~= "-"
end

-- A hostport as /where returns it: DNS labels, the first ending in -<index>, and a port.
function M.valid_hostport(hostport)
  if type(hostport) ~= "string" or #hostport > 300 then
    return false
  end
  local host, port = hostport:match("^([%w%.%-]+):(%d+)$")
  if not host then
    return false
  end
  local port_number = tonumber(port)
  if port_number < 1 or port_number > 65535 or port:sub(1, 1) == "0" then
    return false
  end
  for label in (host .. "."):gmatch("([^.]*)%.") do
    if not dns_label(label) then
      return false
    end
  end
  return host:match("^[%w%-]-%-%d+[.]") ~= nil or host:match("^[%w%-]-%-%d+$") ~= nil
end

-- The hostport in a /where answer, or nil.
function M.hostport_from_answer(body)
  if type(body) ~= "string" then
    return nil
  end
  return body:match('"hostport"%s*:%s*"([^"\\]*)"')
end

-- An epoch: 16 lowercase hex digits.
function M.valid_epoch(epoch)
  return type(epoch) == "string" and #epoch == 16 and epoch:find("^[0-9a-f]+$") ~= nil
end

-- Matches `value_pattern` right after the first "key": in body (the servers write the
-- top-level keys first, so a nested key of the same name is never the one read), or nil.
local function value_of(body, key, value_pattern)
  local _, last = body:find('"' .. key .. '"%s*:%s*')
  return last and body:match(value_pattern, last + 1) or nil
end

-- The epoch in a /where or /placement answer, or nil (also when it is null: joining).
function M.epoch_from_answer(body)
  if type(body) ~= "string" then
    return nil
  end
  local epoch = value_of(body, "epoch", '^"([0-9a-f]*)"')
  return M.valid_epoch(epoch) and epoch or nil
end

-- The "members" array of a /placement answer: ascending instance indexes, or nil.
local MAX_MEMBERS = 65536
function M.members_from_answer(body)
  local list = value_of(body, "members", '^%[([%d%s,]*)%]')
  if not list then
    return nil
  end
  local members, last = {}, -1
  for digits in list:gmatch("[^,%s]+") do
    if not digits:find("^%d+$") or #digits > 10 then
      return nil
    end
    local index = tonumber(digits)
    if index <= last or #members >= MAX_MEMBERS then
      return nil
    end
    members[#members + 1], last = index, index
  end
  return #members > 0 and members or nil
end

-- The placement rule in a /placement answer, checked field by field, or nil.
function M.parse_placement(body)
  if type(body) ~= "string" then
    return nil
  end
  local function str(key)
    return body:match('"' .. key .. '"%s*:%s*"([^"\\]*)"')
  end
  local function int(key)
    local digits = body:match('"' .. key .. '"%s*:%s*(%d+)')
    return digits and #digits <= 10 and tonumber(digits) or nil
  end
  local config = {
    mode = str("mode"),
    prefix = str("prefix"),
    suffix = str("suffix"),
    port = int("port"),
    epoch = M.epoch_from_answer(body),
    members = M.members_from_answer(body),
  }
  if not (config.mode == "hash" or config.mode == "numeric" or config.mode == "jump") then
    return nil
  end
  if not config.epoch or not config.members then
    return nil
  end
  if not config.port or config.port < 1 or config.port > 65535 then
    return nil
  end
  if not dns_label(config.prefix) or not config.suffix then
    return nil
  end
  if config.suffix ~= "" then
    if config.suffix:sub(1, 1) ~= "." then
      return nil
    end
    for label in (config.suffix:sub(2) .. "."):gmatch("([^.]*)%.") do
      if not dns_label(label) then
        return nil
      end
    end
  end
  return config
end

---------------------------------------------------------------------------------------------
-- The filter.

-- Per worker (each Envoy worker has its own Lua state).
local cache = { config = nil, expires = 0 }
-- The route's flow, read once per worker: route metadata only changes with a new
-- configuration, which starts new Lua states.
local route_flow

function M.forget_placement()
  cache.config, cache.expires = nil, 0
end

local function reply(handle, status, code, message)
  local body = '{"error":' .. M.json_string(code) .. ',"message":' .. M.json_string(message) .. "}"
  handle:logInfo("poc-routing: refused with " .. status .. " " .. code)
  handle:respond({ [":status"] = tostring(status), ["content-type"] = "application/json" }, body)
end

local function resolver_get(handle, path)
  local headers, body
  for attempt = 1, RESOLVER_ATTEMPTS do
    headers, body = handle:httpCall(RESOLVER_CLUSTER, {
      [":method"] = "GET",
      [":path"] = path,
      [":authority"] = RESOLVER_CLUSTER,
      ["accept"] = "application/json",
    }, "", RESOLVER_TIMEOUT_MS)
    local status = headers and headers[":status"]
    handle:logDebug("poc-routing: " .. path .. " attempt " .. attempt .. " answered " .. tostring(status))
    if status ~= "503" and status ~= "504" then
      return status, body
    end
  end
  return headers and headers[":status"] or "503", body
end

-- The cached placement rule, refreshed when it is older than PLACEMENT_TTL_S; nil if unavailable.
-- httpCall yields: no headers object may be held across this call.
local function placement(handle)
  local now = os.time()
  if cache.config and now < cache.expires then
    return cache.config
  end
  local status, body = resolver_get(handle, "/placement")
  local config = status == "200" and M.parse_placement(body) or nil
  if config then
    cache.config, cache.expires = config, now + PLACEMENT_TTL_S
    handle:logDebug("poc-routing: placement " .. config.mode .. " x" .. #config.members .. " epoch " .. config.epoch)
  else
    M.forget_placement()
    handle:logInfo("poc-routing: no usable /placement (HTTP " .. tostring(status) .. "); asking /where")
  end
  return config
end

-- The owner's hostport and the epoch of the answer by asking /where (nil if the answer has
-- none). Every other outcome is answered here: respond() ends the script.
local function owner_from_resolver(handle, raw_id)
  local status, body = resolver_get(handle, "/where?client_id=" .. raw_id)
  if status == "400" then
    -- The server rejected the id: pass its answer on, so clients see one set of error codes.
    handle:respond({ [":status"] = "400", ["content-type"] = "application/json" }, body or "")
    return nil
  elseif status == "503" then
    return reply(handle, 503, "resolver_unavailable", "no server instance could be asked where this client belongs")
  elseif status == "504" then
    return reply(handle, 504, "resolver_timeout", "the server instance asked where this client belongs did not answer in time")
  elseif status ~= "200" then
    return reply(handle, 502, "bad_resolver_answer", "the resolver answered HTTP " .. tostring(status))
  end
  return M.hostport_from_answer(body), M.epoch_from_answer(body)
end

local function route(handle)
  local path = handle:headers():get(":path") or ""
  local raw_id, id_or_code, message = M.extract_client_id(path)
  if not raw_id then
    return reply(handle, 400, id_or_code, message)
  end
  if not route_flow then
    route_flow = handle:metadata():get("flow") or "resolver"
  end
  local flow = route_flow

  local hostport, epoch
  local config = flow == "placement" and placement(handle) or nil
  if config then
    local index = M.index(config, id_or_code)
    if not index then
      return reply(handle, 400, "invalid_client_id",
        "client_id must be decimal digits with a value of at most 18446744073709551615 in numeric mode")
    end
    -- Built from a rule whose every field parse_placement checked: a valid hostport.
    hostport, epoch = cached_hostport(config, index), config.epoch
  else
    -- Answers the request itself (and never returns) when /where fails.
    hostport, epoch = owner_from_resolver(handle, raw_id)
    if not M.valid_hostport(hostport) then
      return reply(handle, 502, "bad_resolver_answer", "the resolver's answer has no usable hostport")
    end
    if not epoch then
      return reply(handle, 502, "bad_resolver_answer", "the resolver's answer has no placement epoch")
    end
  end
  local headers = handle:headers()
  handle:streamInfo():dynamicMetadata():set(METADATA_NAMESPACE, "owner", hostport)
  headers:replace(":authority", hostport)
  headers:replace(EPOCH_HEADER, epoch)
  handle:logInfo("poc-routing: client_id=" .. raw_id .. " -> " .. hostport .. " epoch " .. epoch .. " (" .. flow .. ")")
end

function envoy_on_request(handle)
  local ok, err = pcall(route, handle)
  if not ok then
    handle:logErr("poc-routing: routing failed: " .. tostring(err))
    reply(handle, 500, "routing_error", "the routing filter failed; the request was not forwarded")
  end
end

-- For unit tests outside Envoy (busted): `local routing = dofile("lua/routing.lua")`.
return M
