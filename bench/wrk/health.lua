-- a. The trivial route: GET /-/health through the same server stack (the ceiling).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

wrk.method = "GET"
wrk.path = "/-/health"
