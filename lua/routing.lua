-- poc-routing: the Lua flow. Sends /join to the one instance that owns the client id.
--
-- Runs on route A when envoy.yaml enables it there in place of the Rust routing module (the
-- module flow is the default; this is the original design, kept as the readable reference).
-- For each request it:
--   1. finds the single key where the route's source says it is (the client_id query
--      parameter by default, or another parameter or a header: the flow switch writes the
--      route's source into its metadata), with the server's rules (missing, empty, repeated,
--      over 256 bytes, not UTF-8 or holding control characters: 400 with the server's code);
--   2. asks the servers cluster GET /where?client_id=<the key, form-encoded>, so the server
--      decodes the key the same way for /where and /join;
--   3. checks the hostport, records it as dynamic metadata poc.routing/owner (the RBAC guard in
--      envoy.yaml requires it), sets :authority to it, so the dynamic forward proxy dials
--      exactly that instance, and stamps the placement epoch of the answer in x-poc-epoch and
--      the key in x-poc-key (replacing any value a client sent).
-- The servers stay the single source of truth: the owner serves a join only if it owns the id
-- under the stamped epoch, and that epoch is its current one or a recent one (inside the
-- transition window after a member change).
-- Fail closed: every error answers 4xx/5xx JSON, and a failure of this script itself answers 500.
-- The request never goes on with the authority the client sent.

local bit = require("bit")

local MAX_ID_BYTES = 256
local SERVERS_CLUSTER = "servers"
-- /where answers in about a millisecond; an instance that takes longer is hung or overloaded.
local RESOLVER_TIMEOUT_MS = 500
-- A replica that just died or hung stays in the servers cluster until a health check (or
-- outlier detection) notices it; one more attempt lands on another replica.
local RESOLVER_ATTEMPTS = 2
local METADATA_NAMESPACE = "poc.routing"
local EPOCH_HEADER = "x-poc-epoch"
local KEY_HEADER = "x-poc-key"

local M = {}

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

-- application/x-www-form-urlencoded encoding, as the Rust placement crate writes it: the key
-- travels to /where and to the owner (x-poc-key) in this form.
function M.form_encode(s)
  return (s:gsub("[^%w%*%-%._ ]", function(c)
    return string.format("%%%02X", c:byte())
  end):gsub(" ", "+"))
end

-- The route's key source, as the flow switch writes it into the route's metadata for this
-- filter (`poc-stack envoy-config --flow lua`): "query:NAME", "header:NAME" or
-- "path:/segments/{key}/...". Returns the kind and the name (the template for a path), or nil
-- for a source this flow does not read (a cookie: the generator refuses those).
function M.parse_source(source)
  local kind, name = (source or "query:client_id"):match("^(%a+):(.+)$")
  if (kind == "query" or kind == "header" or kind == "path") and name then
    return kind, kind == "header" and name:lower() or name
  end
  return nil
end

local function describe(kind, name)
  if kind == "path" then
    return "the path segment {key} of " .. name
  end
  return (kind == "query" and "the query parameter " or "the header ") .. name
end

-- Checks decoded key bytes by the id rules; returns nil or the code and message.
local function check_id(id, what, decoded)
  if #id == 0 then
    return "invalid_client_id", what .. " is empty"
  end
  if #id > MAX_ID_BYTES then
    return "invalid_client_id", what .. " is " .. #id .. " bytes long; at most " .. MAX_ID_BYTES .. " are allowed"
  end
  local control = id:find("[%z\1-\31\127]")
  if control then
    return "invalid_client_id", what .. " contains a control character at byte " .. (control - 1)
  end
  if not M.valid_utf8(id) then
    return "invalid_client_id", what .. " is not valid UTF-8" .. decoded
  end
  return nil
end

-- Percent-decoding of a path segment: %XX a byte, '+' stays '+'.
local function percent_decode(s)
  return (s:gsub("%%(%x%x)", hex_byte))
end

-- The key of a request by a path source (the template checked by the generator, as the Rust
-- placement crate parses it): the segment where the template has {key}, percent-decoded, if
-- the path's first segments are the template's; the query is ignored.
local function path_key(path, template)
  local what = describe("path", template)
  local missing = "the path does not match " .. template .. ", so it has no key"
  path = path:match("^([^?]*)")
  if path:sub(1, 1) ~= "/" then
    return nil, "missing_client_id", missing
  end
  local parts = {}
  for part in (path:sub(2) .. "/"):gmatch("([^/]*)/") do
    parts[#parts + 1] = part
  end
  local raw
  local i = 0
  for segment in (template:sub(2) .. "/"):gmatch("([^/]*)/") do
    i = i + 1
    local part = parts[i]
    if part == nil then
      return nil, "missing_client_id", missing
    end
    if segment == "{key}" then
      raw = part
    elseif part ~= segment then
      return nil, "missing_client_id", missing
    end
  end
  local id = percent_decode(raw)
  local code, message = check_id(id, what, " after percent-decoding")
  if code then
    return nil, code, message
  end
  return M.form_encode(id), id
end

-- The key of a request by a query source: the raw (still encoded) value of parameter `name`
-- and its decoded bytes, or nil, code, message.
local function query_key(path, name)
  local what = describe("query", name)
  local query = path:match("%?(.*)$")
  local found
  if query then
    for pair in query:gmatch("[^&]+") do
      local key, value = pair:match("^([^=]*)=(.*)$")
      if not key then
        key, value = pair, ""
      end
      if key == name or (key:find("[%%+]") and M.form_decode(key) == name) then
        if found then
          return nil, "duplicate_client_id", what .. " is given more than once; exactly one is allowed"
        end
        found = value
      end
    end
  end
  if not found then
    return nil, "missing_client_id", "the request has no query parameter " .. name
  end
  -- Raw bytes that are not UTF-8 are refused before decoding, as the placement crate does.
  if not M.valid_utf8(found) then
    return nil, "invalid_client_id", what .. " is not valid UTF-8 after percent-decoding"
  end
  local id = M.form_decode(found)
  local code, message = check_id(id, what, " after percent-decoding")
  if code then
    return nil, code, message
  end
  return found, id
end

-- The key of a request in its route's source: `values` are the header's values in order (for
-- a header source). Returns the key as /where and x-poc-key carry it (form-encoded) and the
-- key itself, or nil, code, message: the same codes and messages as the Rust placement crate.
function M.extract_key(kind, name, path, values)
  if kind == "query" then
    return query_key(path, name)
  end
  if kind == "path" then
    return path_key(path, name)
  end
  local what = describe(kind, name)
  if #values == 0 then
    return nil, "missing_client_id", "the request has no header " .. name
  end
  if #values > 1 then
    return nil, "duplicate_client_id", what .. " is given more than once; exactly one is allowed"
  end
  local code, message = check_id(values[1], what, "")
  if code then
    return nil, code, message
  end
  return M.form_encode(values[1]), values[1]
end

-- The key by today's default source, the client_id query parameter.
function M.extract_client_id(path)
  return query_key(path, "client_id")
end

---------------------------------------------------------------------------------------------
-- Answers from the servers cluster.

local function dns_label(s)
  return type(s) == "string" and #s >= 1 and #s <= 63 and s:find("^[%w%-]+$") ~= nil
    and s:sub(1, 1) ~= "-" and s:sub(-1) ~= "-"
end

-- A hostport as /where returns it: DNS labels, the first ending in -<index>, and a port. Only
-- the shape: which names are instances is decided by route A's RBAC guard in envoy.yaml, which
-- deploy/tests/guard.rs checks against the placement crate's namings.
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

---------------------------------------------------------------------------------------------
-- The filter.

local function reply(handle, status, code, message, source)
  local body = '{"error":' .. M.json_string(code) .. ',"message":' .. M.json_string(message)
    .. (source and (',"source":' .. M.json_string(source)) or "") .. "}"
  handle:logInfo("poc-routing: refused with " .. status .. " " .. code)
  handle:respond({ [":status"] = tostring(status), ["content-type"] = "application/json" }, body)
end

local function where_get(handle, path)
  local headers, body
  for attempt = 1, RESOLVER_ATTEMPTS do
    headers, body = handle:httpCall(SERVERS_CLUSTER, {
      [":method"] = "GET",
      [":path"] = path,
      [":authority"] = SERVERS_CLUSTER,
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

-- The owner's hostport and the epoch of the answer by asking /where (nil if the answer has
-- none). Every other outcome is answered here: respond() ends the script.
local function owner_from_where(handle, raw_id)
  local status, body = where_get(handle, "/where?client_id=" .. raw_id)
  if status == "400" then
    -- The server rejected the id: pass its answer on, so clients see one set of error codes.
    handle:respond({ [":status"] = "400", ["content-type"] = "application/json" }, body or "")
    return nil
  elseif status == "503" then
    return reply(handle, 503, "where_unavailable", "no server instance could be asked where this client belongs")
  elseif status == "504" then
    return reply(handle, 504, "where_timeout", "the server instance asked where this client belongs did not answer in time")
  elseif status ~= "200" then
    return reply(handle, 502, "bad_where_answer", "/where answered HTTP " .. tostring(status))
  end
  return M.hostport_from_answer(body), M.epoch_from_answer(body)
end

-- Every value of request header `name`, in order.
local function header_values(headers, name)
  local values = {}
  for i = 0, headers:getNumValues(name) - 1 do
    values[#values + 1] = headers:getAtIndex(name, i)
  end
  return values
end

local function route(handle)
  local headers = handle:headers()
  local source = handle:metadata():get("key") or "query:client_id"
  local kind, name = M.parse_source(source)
  if not kind then
    error("route key source " .. tostring(source) .. " is not one the Lua flow reads")
  end
  local values = kind == "header" and header_values(headers, name) or {}
  -- The path as Envoy normalised it, before any rewrite: the key is where the client put it.
  local raw_id, id_or_code, message = M.extract_key(kind, name, headers:get(":path") or "", values)
  if not raw_id then
    return reply(handle, 400, id_or_code, message, source)
  end
  -- Answers the request itself (and never returns) when /where fails.
  local hostport, epoch = owner_from_where(handle, raw_id)
  if not M.valid_hostport(hostport) then
    return reply(handle, 502, "bad_where_answer", "the /where answer has no usable hostport")
  end
  if not epoch then
    return reply(handle, 502, "bad_where_answer", "the /where answer has no placement epoch")
  end
  handle:streamInfo():dynamicMetadata():set(METADATA_NAMESPACE, "owner", hostport)
  -- A new handle: the one read before /where is out of scope once httpCall has yielded.
  headers = handle:headers()
  headers:replace(":authority", hostport)
  headers:replace(EPOCH_HEADER, epoch)
  -- The owner checks ownership of the key this request was routed by, from this header
  -- (replacing any value a client sent), whatever the route's source.
  headers:replace(KEY_HEADER, raw_id)
  handle:logDebug("poc-routing: " .. source .. " " .. raw_id .. " -> " .. hostport .. " epoch " .. epoch)
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
