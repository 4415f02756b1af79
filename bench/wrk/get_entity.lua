-- b. GET one entity by id, ids drawn uniformly over the whole store.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

accepted = { [200] = true }

function request()
  return wrk.format("GET", BASE .. "/entities/" .. random_id())
end
