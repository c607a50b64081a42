-- wrk script: POST 1 (io.statefun.types/long) to example/counter over ADDRESSES ids.
local addresses = tonumber(os.getenv("ADDRESSES") or "1000")
wrk.method = "POST"
wrk.body = "1"
wrk.headers["Content-Type"] = "application/vnd.io.statefun.types/long"
local counter = 0

request = function()
  counter = counter + 1
  return wrk.format(nil, "/example/counter/" .. (counter % addresses))
end

done = function(summary, latency, requests)
  local e = summary.errors
  local accepted = summary.requests - e.status - e.connect - e.read - e.write - e.timeout
  io.write(string.format("ACCEPTED %d\n", accepted))
  io.write(string.format("P50_MS %.2f\nP99_MS %.2f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
