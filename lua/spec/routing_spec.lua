-- Unit tests for lua/routing.lua's pure helpers, outside Envoy: `make test-lua` (busted).
-- The id rules must match the Rust placement crate's (placement/src/id.rs) case for case.

local routing = dofile("lua/routing.lua")

describe("extract_client_id", function()
  local long = string.rep("x", 257)
  local cases = {
    -- path, raw value or nil, error code
    { "/join", nil, "missing_client_id" },
    { "/join?", nil, "missing_client_id" },
    { "/join?other=1", nil, "missing_client_id" },
    { "/join?client_ids=1", nil, "missing_client_id" },
    { "/join?client_id=abc", "abc" },
    { "/join?a=1&client_id=abc&b=2", "abc" },
    { "/join?client_id=a+b", "a+b" },
    { "/join?client_id=a%20b%26c", "a%20b%26c" },
    { "/join?client%5Fid=x", "x" },
    { "/join?client_id=100%", "100%" },
    { "/join?&&client_id=x&&", "x" },
    { "/join?client_id=", nil, "invalid_client_id" },
    { "/join?client_id", nil, "invalid_client_id" },
    { "/join?client_id=a&client_id=a", nil, "duplicate_client_id" },
    { "/join?client_id=&client_id=b", nil, "duplicate_client_id" },
    { "/join?client_id=" .. long, nil, "invalid_client_id" },
    { "/join?client_id=" .. string.rep("%C3%A9", 128), string.rep("%C3%A9", 128) },
    { "/join?client_id=" .. string.rep("%C3%A9", 129), nil, "invalid_client_id" },
  }
  -- Found invalid only after decoding, as the server does.
  for _, bad in ipairs({ "%FF", "a%00b", "%7F", "%0A", "%C0%AF", "%ED%A0%80", "%F4%90%80%80", "%E6%97" }) do
    table.insert(cases, { "/join?client_id=" .. bad, nil, "invalid_client_id" })
  end
  for _, case in ipairs(cases) do
    it(case[1]:sub(1, 60), function()
      local raw, id_or_code = routing.extract_client_id(case[1])
      assert.are.equal(case[2], raw)
      if case[2] then
        assert.are.equal(routing.form_decode(case[2]), id_or_code)
      else
        assert.are.equal(case[3], id_or_code)
      end
    end)
  end
end)

describe("the shared key-source vectors (placement/tests/data/keys.tsv)", function()
  local file = assert(io.open("placement/tests/data/keys.tsv", "r"))
  local checked, skipped = 0, 0
  for line in file:lines() do
    if line:sub(1, 1) ~= "#" and line ~= "" then
      local source, path, values, want = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$")
      assert(source, "keys.tsv: " .. line)
      local kind, name = routing.parse_source(source)
      if not kind then
        skipped = skipped + 1
      else
        checked = checked + 1
        it(source .. " " .. path .. " [" .. values .. "]", function()
          local list = {}
          if values ~= "-" then
            for v in (values .. " | "):gmatch("(.-) | ") do
              list[#list + 1] = v
            end
          end
          local raw, id_or_code, message = routing.extract_key(kind, name, path, list)
          if want:sub(1, 1) == "=" then
            assert.are.equal(want:sub(2), id_or_code)
            assert.are.equal(want:sub(2), routing.form_decode(raw))
          else
            assert.is_nil(raw)
            assert.are.equal(want:sub(2), id_or_code)
            assert.truthy(message:find(name, 1, true), message)
          end
        end)
      end
    end
  end
  file:close()
  it("covers the query, header and path sources, and skips only cookies", function()
    assert.is_true(checked >= 40)
    assert.is_true(skipped >= 5)
  end)
  it("refuses to read sources it does not support", function()
    assert.is_nil(routing.parse_source("cookie:user"))
    assert.are.same({ "path", "/rooms/{key}" }, { routing.parse_source("path:/rooms/{key}") })
    assert.are.same({ "header", "x-user-id" }, { routing.parse_source("header:X-User-Id") })
    assert.are.same({ "query", "client_id" }, { routing.parse_source(nil) })
  end)
end)

describe("extract_key on raw bytes", function()
  it("refuses a raw value that is not UTF-8 before decoding, as the placement crate does", function()
    local raw, code = routing.extract_key("query", "client_id", "/join?client_id=\195%A9", {})
    assert.is_nil(raw)
    assert.are.equal("invalid_client_id", code)
    assert.are.equal("%C3%A9", (routing.extract_key("query", "client_id", "/join?client_id=%C3%A9", {})))
  end)
end)

describe("form_encode", function()
  it("encodes as the placement crate does, and reads back", function()
    assert.are.equal("a+b", routing.form_encode("a b"))
    assert.are.equal("a%2Bb%26c%3D", routing.form_encode("a+b&c="))
    assert.are.equal("Zo%C3%AB", routing.form_encode("Zoë"))
    assert.are.equal("x-y_z.w*", routing.form_encode("x-y_z.w*"))
    for _, s in ipairs({ "a b", "100%", "日本", "a+b" }) do
      assert.are.equal(s, routing.form_decode(routing.form_encode(s)))
    end
  end)
end)

describe("form_decode", function()
  it("decodes like an HTML form", function()
    assert.are.equal("a b", routing.form_decode("a+b"))
    assert.are.equal("a+b", routing.form_decode("a%2Bb"))
    assert.are.equal("日本", routing.form_decode("%E6%97%A5%E6%9C%AC"))
    assert.are.equal("%zz", routing.form_decode("%zz"))
    assert.are.equal("100%", routing.form_decode("100%"))
  end)
end)

describe("valid_hostport", function()
  local good = {
    "poc-routing-server-1:8081",
    "poc-routing-server-12:8081",
    "server-0.server-headless.poc-routing.svc.cluster.local:8081",
  }
  local bad = {
    "127.0.0.1:9901", "localhost:9901", "evil.example:80", "example.com:80",
    "poc-routing-server-1", "poc-routing-server-1:", "poc-routing-server-1:0",
    "poc-routing-server-1:65536", "poc-routing-server-1:08081", "-1:8081",
    "poc-routing-server-1:8081/x", "poc-routing-server-1:8081 x", "a..b-1:80",
    "poc-routing-server-1.:8081", "", nil, 42,
  }
  for _, h in ipairs(good) do
    it("accepts " .. h, function() assert.is_true(routing.valid_hostport(h)) end)
  end
  for _, h in ipairs(bad) do
    it("refuses " .. tostring(h), function() assert.is_false(routing.valid_hostport(h)) end)
  end
end)

describe("hostport_from_answer", function()
  it("reads the hostport of a /where answer", function()
    local body = '{"client_id":"a","index":2,"hostport":"poc-routing-server-2:8081","mode":"hash","replicas":3}'
    assert.are.equal("poc-routing-server-2:8081", routing.hostport_from_answer(body))
  end)
  it("refuses what is not one", function()
    assert.is_nil(routing.hostport_from_answer("garbage"))
    assert.is_nil(routing.hostport_from_answer(""))
    assert.is_nil(routing.hostport_from_answer(nil))
    assert.is_nil(routing.hostport_from_answer('{"hostport":"a\\"b:1"}'))
  end)
end)

describe("valid_utf8", function()
  it("accepts UTF-8 and refuses what is not", function()
    for _, good in ipairs({ "", "abc", "Zoë", "日本語", "😀", "\u{10FFFF}" }) do
      assert.is_true(routing.valid_utf8(good), good)
    end
    for _, bad in ipairs({ "\xff", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe6\x97", "a\x80" }) do
      assert.is_false(routing.valid_utf8(bad), bad)
    end
  end)
end)

describe("epoch_from_answer", function()
  it("reads a 16-hex-digit epoch and nothing else", function()
    assert.are.equal("00ff00ff00ff00ff", routing.epoch_from_answer('{"index":2,"epoch":"00ff00ff00ff00ff"}'))
    for _, bad in ipairs({ "", "garbage", '{"epoch":null}', '{"epoch":"00FF00FF00FF00FF"}',
      '{"epoch":"0123"}', '{"epoch":"0123456789abcdef0"}', '{"epoch":"0123456789abcdeg"}' }) do
      assert.is_nil(routing.epoch_from_answer(bad), bad)
    end
    assert.is_nil(routing.epoch_from_answer(nil))
  end)
end)

describe("json_string", function()
  it("escapes quotes, backslashes and control characters", function()
    assert.are.equal('"a\\"b\\\\c\\u000a"', routing.json_string('a"b\\c\n'))
  end)
end)

-- The wire contract's golden files (wire/tests/golden/, which the Rust types write exactly): the
-- script must read the answers the servers really write, field order included.
describe("the golden answers of the wire contract", function()
  local function golden(name)
    local file = assert(io.open("wire/tests/golden/" .. name, "r"))
    local text = file:read("*a")
    file:close()
    return text
  end
  -- The values wire/tests/golden.rs writes into the files.
  local epoch_of = function(text)
    return text:match('^{[^{]-"epoch":"(%x+)"')
  end

  it("reads hostport and epoch from /where", function()
    local body = golden("where.json")
    assert.are.equal("poc-routing-server-2:8081", routing.hostport_from_answer(body))
    local epoch = routing.epoch_from_answer(body)
    assert.is_true(routing.valid_epoch(epoch))
    assert.are.equal(epoch_of(body), epoch)
  end)

  it("reads the top-level epoch of /placement, not the previous view's", function()
    local body = golden("placement.json")
    local previous = body:match('"previous":{"epoch":"(%x+)"')
    assert.is_truthy(previous, "the golden answer has a previous view")
    local epoch = routing.epoch_from_answer(body)
    assert.is_true(routing.valid_epoch(epoch))
    assert.are_not.equal(previous, epoch)
    assert.are.equal(epoch_of(body), epoch)
  end)

  it("reads no epoch from a joining instance's /placement", function()
    assert.is_nil(routing.epoch_from_answer(golden("placement-joining.json")))
  end)
end)
