-- GET a path drawn at random from BENCH_PATHS (one URL-encoded path per line), for
-- bench/catalog.py: package_search mixes, datastore_search and Datasette filters.
-- With BENCH_VARY_ROWS set, each request also asks for its own page size (rows=10..59) and
-- page (start=0..rows*4), so a server-side result cache rarely sees the same call twice.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

accepted = { [200] = true }

local paths = {}
for line in string.gmatch(os.getenv("BENCH_PATHS") or "", "[^\n]+") do
  table.insert(paths, line)
end
local vary = os.getenv("BENCH_VARY_ROWS") ~= nil

function request()
  local path = paths[math.random(1, #paths)]
  if vary then
    local rows = math.random(10, 59)
    path = string.format("%s&rows=%d&start=%d", path, rows, rows * math.random(0, 4))
  end
  return wrk.format("GET", path)
end
