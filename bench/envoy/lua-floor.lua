-- Bench-only: the least a routing script can do, for the `envoy_lua_floor` diagnostic. It sends
-- every join to one fixed owner (set as route A's guard requires), so what it measures is the
-- Lua filter's own cost on route A's path.
function envoy_on_request(handle)
  handle:streamInfo():dynamicMetadata():set("poc.routing", "owner", "poc-routing-server-1:8081")
  handle:headers():replace(":authority", "poc-routing-server-1:8081")
end
