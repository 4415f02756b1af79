-- f. Geo query: entities near (within 2 km of) a random point in Sano, limit 20.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

accepted = { [200] = true }

function request()
  local lon, lat = random_point()
  return wrk.format("GET", string.format(
    "%s/entities?type=WaterLevelObserved&georel=near%%3BmaxDistance%%3D%%3D2000"
      .. "&geometry=Point&coordinates=%%5B%.5f%%2C%.5f%%5D&limit=20", BASE, lon, lat))
end
