-- Shared by every scenario: counts responses the scenario does not accept and prints one
-- JSON line ("BENCH_RESULT {...}") in done() for bench/run.py to parse.
-- A scenario may set the global `accepted` to a set of statuses; default is any 2xx.

-- Every sensor's id, the store's size and the Sano bounding box, as run.py loaded them.
ENTITIES = tonumber(os.getenv("BENCH_ENTITIES") or "100000")
ID_FORMAT = "urn:ngsi-ld:WaterLevelObserved:sano-%06d"
LON_MIN, LON_MAX, LAT_MIN, LAT_MAX = 139.45, 139.70, 36.25, 36.50
BASE = "/ngsi-ld/v1"
wrk.headers["Accept"] = "application/json"
-- bench/auth.py: an API key on every request, as an app with a key sends it
if os.getenv("BENCH_KEY") then
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
end

rejected = 0
first_rejected = ""

local threads = {}

function setup(thread)
  thread:set("thread_number", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  -- Each thread draws its own sequence; seeded from the clock so runs differ.
  math.randomseed(os.time() * 97 + (thread_number or 1))
  math.random(); math.random()
end

function random_id()
  return string.format(ID_FORMAT, math.random(0, ENTITIES - 1))
end

-- Sensor i stands at point i of the R2 low-discrepancy sequence over the box, so sensors are
-- spread evenly and run.py (Python) and the upsert scenario (Lua) agree on where each one is.
local R2 = 1.32471795724474602596
function sensor_point(i)
  local x, y = (0.5 + i / R2) % 1, (0.5 + i / (R2 * R2)) % 1
  return LON_MIN + x * (LON_MAX - LON_MIN), LAT_MIN + y * (LAT_MAX - LAT_MIN)
end

function random_point()
  return LON_MIN + math.random() * (LON_MAX - LON_MIN), LAT_MIN + math.random() * (LAT_MAX - LAT_MIN)
end

function response(status, headers, body)
  local ok
  if accepted then ok = accepted[status] else ok = status >= 200 and status < 300 end
  if not ok then
    rejected = rejected + 1
    if first_rejected == "" then
      first_rejected = status .. " " .. string.sub(body or "", 1, 300)
    end
  end
end

local function json_string(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

function done(summary, latency, requests)
  local total_rejected, sample = 0, ""
  for _, t in ipairs(threads) do
    total_rejected = total_rejected + (t:get("rejected") or 0)
    local s = t:get("first_rejected") or ""
    if sample == "" then sample = s end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "rejected": %d, '
      .. '"socket_errors": %d, "timeouts": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "mean_us": %.1f, "first_rejected": %s}\n',
    summary.requests, summary.duration, summary.bytes, total_rejected,
    e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean, json_string(sample)))
end
