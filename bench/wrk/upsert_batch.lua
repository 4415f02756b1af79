-- d. Batch upsert of 100 existing entities per request (default upsert = replace); a run of
-- 100 consecutive ids from a random start, fresh level/status/times, same name and place.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

BATCH = 100
-- 207 means some elements failed: an error here, although it is a 2xx.
accepted = { [201] = true, [204] = true }
wrk.headers["Content-Type"] = "application/json"

local RIVERS = { "秋山川", "旗川", "渡良瀬川", "才川", "三杉川", "菊沢川", "出流川", "彦間川" }

local function entity(i, now)
  local level = math.random() * 5
  local status = level > 4 and "alert" or (level > 3 and "warning" or "normal")
  local river = i % #RIVERS + 1
  local lon, lat = sensor_point(i)
  return string.format(
    '{"id": "' .. ID_FORMAT .. '", "type": "WaterLevelObserved", '
      .. '"name": {"type": "Property", "value": "%s 水位計 %d"}, '
      .. '"waterLevel": {"type": "Property", "value": %.3f, "unitCode": "MTR", '
      .. '"observedAt": "%s"}, '
      .. '"status": {"type": "Property", "value": "%s"}, '
      .. '"refRiver": {"type": "Relationship", "object": "urn:ngsi-ld:River:sano-%d"}, '
      .. '"location": {"type": "GeoProperty", "value": {"type": "Point", '
      .. '"coordinates": [%.6f, %.6f]}}, '
      .. '"dateObserved": {"type": "Property", "value": {"@type": "DateTime", "@value": "%s"}}}',
    i, RIVERS[river], i, level, now, status, river, lon, lat, now)
end

function request()
  local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
  local start = math.random(0, ENTITIES - BATCH)
  local parts = {}
  for k = 0, BATCH - 1 do
    parts[k + 1] = entity(start + k, now)
  end
  local body = "[" .. table.concat(parts, ", ") .. "]"
  return wrk.format("POST", BASE .. "/entityOperations/upsert", nil, body)
end
