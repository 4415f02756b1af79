-- GET a path drawn at random from BENCH_PATHS (one URL-encoded path per line), for
-- bench/catalog.py: package_search mixes, datastore_search and Datasette filters.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

accepted = { [200] = true }

local paths = {}
for line in string.gmatch(os.getenv("BENCH_PATHS") or "", "[^\n]+") do
  table.insert(paths, line)
end

function request()
  return wrk.format("GET", paths[math.random(1, #paths)])
end
