-- poc-routing: send /join to the one instance that owns the client id.
--
-- Runs only on the /join route (envoy.yaml names it per route). For each request it:
--   1. finds the single client_id in the query, with the server's rules (missing, empty,
--      repeated or over 256 bytes after decoding: 400 with the server's error code);
--   2. asks the resolver cluster GET /where?client_id=<the id as the client encoded it>, so the
--      server decodes the id once, the same way for /where and for /join;
--   3. checks the hostport it got back, records it as dynamic metadata poc.routing/owner (the
--      RBAC guard in envoy.yaml requires it), and sets :authority to it, so the dynamic forward
--      proxy dials exactly that instance.
-- Fail closed: every error answers 4xx/5xx JSON, and a failure of this script itself answers 500.
-- The request never goes on with the authority the client sent.

local MAX_ID_BYTES = 256
local RESOLVER_CLUSTER = "resolver"
local RESOLVER_TIMEOUT_MS = 1000
-- A replica that just died stays in the resolver cluster until a health check notices it;
-- one more attempt lands on another replica.
local RESOLVER_ATTEMPTS = 2
local METADATA_NAMESPACE = "poc.routing"

local M = {}

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

local function reply(handle, status, code, message, extra)
  local body = '{"error":' .. M.json_string(code) .. ',"message":' .. M.json_string(message)
  for _, kv in ipairs(extra or {}) do
    body = body .. "," .. M.json_string(kv[1]) .. ":" .. M.json_string(kv[2])
  end
  body = body .. "}"
  handle:logInfo("poc-routing: refused with " .. status .. " " .. code)
  handle:respond({ [":status"] = tostring(status), ["content-type"] = "application/json" }, body)
end

-- application/x-www-form-urlencoded decoding: '+' is a space, %XX a byte; a '%' not followed
-- by two hex digits stays as it is. The same rule as the Rust placement crate.
function M.form_decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

-- Returns the raw (still encoded) client_id value, or nil, error code, message.
function M.extract_client_id(path)
  local query = path:match("%?(.*)$")
  local found
  if query then
    for pair in query:gmatch("[^&]+") do
      local name, value = pair:match("^([^=]*)=(.*)$")
      if not name then
        name, value = pair, ""
      end
      if M.form_decode(name) == "client_id" then
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
  local length = #M.form_decode(found)
  if length == 0 then
    return nil, "invalid_client_id", "client_id is empty"
  end
  if length > MAX_ID_BYTES then
    return nil, "invalid_client_id",
      "client_id is " .. length .. " bytes long; at most " .. MAX_ID_BYTES .. " are allowed"
  end
  return found
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
    if #label == 0 or #label > 63 or label:sub(1, 1) == "-" or label:sub(-1) == "-" then
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

local function ask_resolver(handle, raw_id)
  local headers, body
  for attempt = 1, RESOLVER_ATTEMPTS do
    headers, body = handle:httpCall(RESOLVER_CLUSTER, {
      [":method"] = "GET",
      [":path"] = "/where?client_id=" .. raw_id,
      [":authority"] = RESOLVER_CLUSTER,
      ["accept"] = "application/json",
    }, "", RESOLVER_TIMEOUT_MS)
    local status = headers and headers[":status"]
    handle:logDebug("poc-routing: /where attempt " .. attempt .. " answered " .. tostring(status))
    if status ~= "503" then
      return status, body
    end
  end
  return "503", body
end

local function route(handle)
  local path = handle:headers():get(":path") or ""
  local raw_id, code, message = M.extract_client_id(path)
  if not raw_id then
    return reply(handle, 400, code, message)
  end
  handle:logDebug("poc-routing: client_id=" .. raw_id .. ", asking " .. RESOLVER_CLUSTER)

  -- httpCall yields: no headers object may be held across it.
  local status, body = ask_resolver(handle, raw_id)

  if status == "400" then
    -- The server rejected the id (bad UTF-8, control characters, not numeric...): pass its
    -- answer on, so clients see one set of error codes.
    handle:respond({ [":status"] = "400", ["content-type"] = "application/json" }, body or "")
    return
  elseif status == "503" then
    return reply(handle, 503, "resolver_unavailable", "no server instance could be asked where this client belongs")
  elseif status == "504" then
    return reply(handle, 504, "resolver_timeout", "the server instance asked where this client belongs did not answer in time")
  elseif status ~= "200" then
    return reply(handle, 502, "bad_resolver_answer", "the resolver answered HTTP " .. tostring(status))
  end

  local hostport = M.hostport_from_answer(body)
  if not M.valid_hostport(hostport) then
    return reply(handle, 502, "bad_resolver_answer", "the resolver's answer has no usable hostport")
  end

  handle:streamInfo():dynamicMetadata():set(METADATA_NAMESPACE, "owner", hostport)
  handle:headers():replace(":authority", hostport)
  handle:logInfo("poc-routing: client_id=" .. raw_id .. " -> " .. hostport)
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
