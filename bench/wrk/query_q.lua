-- e. type + q query, limit 20: waterLevel above a random threshold in 4.25-4.75 m
-- (5-15% of the store matches, since levels are uniform over 0-5 m).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

accepted = { [200] = true }

function request()
  local threshold = 4.25 + math.random() * 0.5
  return wrk.format("GET", string.format(
    "%s/entities?type=WaterLevelObserved&q=waterLevel%%3E%.2f&limit=20", BASE, threshold))
end
