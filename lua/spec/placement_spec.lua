-- The Lua placement must match the Rust placement on every case of the project's reference
-- vectors (placement/tests/data/placement.json): FNV-1a 32/64, jump hash, and every mode.

local routing = dofile("lua/routing.lua")

-- A small JSON reader that keeps numbers as their text: the vectors hold 64-bit values that a
-- double cannot represent exactly.
local function decode(text)
  local pos = 1
  local function ws() pos = text:find("[^ \t\r\n]", pos) or #text + 1 end
  local value
  local function str()
    local out, i = {}, pos + 1
    while true do
      local c = text:sub(i, i)
      if c == '"' then
        pos = i + 1
        return table.concat(out)
      elseif c == "\\" then
        local e = text:sub(i + 1, i + 1)
        if e == "u" then
          local cp = tonumber(text:sub(i + 2, i + 5), 16)
          i = i + 6
          if cp >= 0xD800 and cp <= 0xDBFF then -- surrogate pair
            local lo = tonumber(text:sub(i + 2, i + 5), 16)
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            i = i + 6
          end
          table.insert(out, utf8 and utf8.char(cp) or (function()
            if cp < 0x80 then return string.char(cp) end
            if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
            if cp < 0x10000 then
              return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
            end
            return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
              0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
          end)())
        else
          local map = { n = "\n", t = "\t", r = "\r", b = "\b", f = "\f" }
          table.insert(out, map[e] or e)
          i = i + 2
        end
      else
        table.insert(out, c)
        i = i + 1
      end
    end
  end
  function value()
    ws()
    local c = text:sub(pos, pos)
    if c == "{" then
      local obj = {}
      pos = pos + 1
      ws()
      if text:sub(pos, pos) == "}" then pos = pos + 1 return obj end
      while true do
        ws()
        local k = str()
        ws()
        pos = pos + 1 -- ':'
        obj[k] = value()
        ws()
        local sep = text:sub(pos, pos)
        pos = pos + 1
        if sep == "}" then return obj end
      end
    elseif c == "[" then
      local arr = {}
      pos = pos + 1
      ws()
      if text:sub(pos, pos) == "]" then pos = pos + 1 return arr end
      while true do
        table.insert(arr, value())
        ws()
        local sep = text:sub(pos, pos)
        pos = pos + 1
        if sep == "]" then return arr end
      end
    elseif c == '"' then
      return str()
    elseif text:sub(pos, pos + 3) == "null" then
      pos = pos + 4
      return nil
    else
      local num = text:match("^-?%d+", pos)
      pos = pos + #num
      return { number = num }
    end
  end
  return value()
end

local function u64(num)
  local v = 0ULL
  for i = 1, #num.number do
    v = v * 10ULL + (num.number:byte(i) - 48)
  end
  return v
end

local f = assert(io.open("placement/tests/data/placement.json", "rb"))
local vectors = decode(f:read("*a"))
f:close()

describe("placement vectors", function()
  it("has every section", function()
    assert.is_true(#vectors.fnv > 100 and #vectors.jump > 10 and #vectors.placement > 4000)
  end)

  it("FNV-1a 32 and 64", function()
    for _, case in ipairs(vectors.fnv) do
      assert.are.equal(tonumber(case.fnv1a32.number), routing.fnv1a32(case.input), case.input)
      assert.is_true(u64(case.fnv1a64) == routing.fnv1a64(case.input), case.input)
    end
  end)

  it("jump consistent hash", function()
    for _, case in ipairs(vectors.jump) do
      local got = routing.jump(u64(case.key), tonumber(case.buckets.number))
      assert.are.equal(tonumber(case.bucket.number), got, case.key.number .. "/" .. case.buckets.number)
    end
  end)

  it("every mode, every case (an invalid id has index null)", function()
    local checked, invalid = 0, 0
    for _, case in ipairs(vectors.placement) do
      local config = {
        mode = case.mode, members = routing.contiguous(tonumber(case.base.number), tonumber(case.replicas.number)),
        prefix = "p", suffix = "", port = 1,
      }
      local got
      local raw, id = routing.extract_client_id("/join?client_id=" .. case.client_id:gsub("[^%w]", function(c)
        return string.format("%%%02X", c:byte())
      end))
      if raw then
        got = routing.index(config, id)
      end
      local want = case.index and tonumber(case.index.number) or nil
      assert.are.equal(want, got, case.mode .. " x" .. case.replicas.number .. " base " .. case.base.number .. " " .. case.client_id)
      checked = checked + 1
      if want == nil then invalid = invalid + 1 end
    end
    assert.is_true(checked > 4000 and invalid > 0)
  end)

  it("member lists with gaps (placement/tests/data/members.json)", function()
    local mf = assert(io.open("placement/tests/data/members.json", "rb"))
    local member_vectors = decode(mf:read("*a"))
    mf:close()
    local checked = 0
    for _, case in ipairs(member_vectors.members) do
      local members = {}
      for i, m in ipairs(case.members) do members[i] = tonumber(m.number) end
      local config = { mode = case.mode, members = members }
      local raw, id = routing.extract_client_id("/join?client_id=" .. case.client_id:gsub("[^%w]", function(c)
        return string.format("%%%02X", c:byte())
      end))
      local got = raw and routing.index(config, id) or nil
      local want = case.index and tonumber(case.index.number) or nil
      assert.are.equal(want, got, case.mode .. " " .. table.concat(members, ",") .. " " .. case.client_id)
      checked = checked + 1
    end
    assert.is_true(checked > 2000)
  end)

  it("numeric mode parses exactly up to 2^64-1", function()
    assert.is_true(routing.parse_decimal_u64("18446744073709551615") == 18446744073709551615ULL)
    assert.is_nil(routing.parse_decimal_u64("18446744073709551616"))
    assert.is_nil(routing.parse_decimal_u64("99999999999999999999"))
    assert.is_true(routing.parse_decimal_u64(string.rep("0", 255) .. "7") == 7ULL)
    assert.is_nil(routing.parse_decimal_u64(""))
    assert.is_nil(routing.parse_decimal_u64("-5"))
  end)
end)
