-- wrk script: sends one fixed request (given after `--`: METHOD PATH BODY [HEADER: VALUE]...)
-- and prints a JSON summary with latency percentiles on completion.
local req

function init(args)
  local method, path, body = args[1], args[2], args[3]
  local headers = {}
  for i = 4, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    headers[name] = value
  end
  if body == "" then body = nil end
  req = wrk.format(method, path, headers, body)
end

function request()
  return req
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"non_2xx":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
