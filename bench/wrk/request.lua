-- wrk script: sends one fixed request (given after `--`: METHOD PATH BODY [HEADER: VALUE]...)
-- and prints a JSON summary with latency percentiles on completion.
--
-- A header value `PREFIX@each-line-of:FILE` makes one request per line of FILE, with that
-- header set to PREFIX followed by the line, sent in turn: e.g. a fresh vault token per
-- request. The requests are all formatted up front, so the loop stays as cheap as one.
local reqs
local n = 0

function init(args)
  local method, path, body = args[1], args[2], args[3]
  local headers, rotate = {}, nil
  for i = 4, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    local prefix, file = value:match("^(.-)@each%-line%-of:(.+)$")
    if file then
      rotate = { name = name, prefix = prefix, file = file }
    else
      headers[name] = value
    end
  end
  if body == "" then body = nil end
  reqs = {}
  if rotate then
    for line in io.lines(rotate.file) do
      headers[rotate.name] = rotate.prefix .. line
      reqs[#reqs + 1] = wrk.format(method, path, headers, body)
    end
  else
    reqs[1] = wrk.format(method, path, headers, body)
  end
end

function request()
  n = n % #reqs + 1
  return reqs[n]
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"non_2xx":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
