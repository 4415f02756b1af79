-- c. PATCH one attribute (waterLevel) of a random entity with a random value.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

accepted = { [204] = true }
wrk.headers["Content-Type"] = "application/json"

function request()
  local body = string.format('{"value": %.3f}', math.random() * 5)
  return wrk.format("PATCH", BASE .. "/entities/" .. random_id() .. "/attrs/waterLevel", nil, body)
end
