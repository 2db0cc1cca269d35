"""Rate limits in Redis: one Lua script per decision, so N gateway replicas enforce one limit exactly.

The script reads the clock from Redis (TIME), so replicas with drifting clocks still agree. It is the
GCRA of rate_limits.gcra written in Lua; tests hold the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from penstock.router.rate_limits import Ask, Decision, Rate, RateState, Slots

# KEYS: the rate buckets, then the in-flight sets. ARGV: lease_ms, request_id, the number of rate
# buckets, then per rate bucket interval_ms and cost, then per in-flight set its limit. Times in ms.
# Returns {allowed, retry_after_ms, refused_by, remaining_1, reset_ms_1, remaining_2, ...}.
_DECIDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local period = 60000
local lease, request_id, n_rates = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local reply, tats, before, intervals = {1, 0, ''}, {}, {}, {}
local retry = 0
for i = 1, n_rates do
  local interval, cost = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  local start = tonumber(redis.call('GET', KEYS[i]) or now)
  if start < now then start = now end
  local new_tat = start + cost * interval
  local excess = new_tat - now - period
  if excess > 0.000001 and excess > retry then retry = excess; reply[3] = 'rate:' .. i end
  tats[i], before[i], intervals[i] = new_tat, start - now, interval
end
-- Remaining and reset per bucket: after this request if it passes, as they stand if it does not.
for i = 1, n_rates do
  local used = tats[i] - now
  if retry > 0 then used = before[i] end
  reply[#reply + 1] = math.max(0, math.floor((period - used) / intervals[i] + 0.000001))
  reply[#reply + 1] = math.floor(used)
end
if retry > 0 then
  reply[1], reply[2] = 0, math.ceil(retry)
  return reply
end
local first_limit = 4 + 2 * n_rates
for j = n_rates + 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[j], '-inf', now - lease)
  if redis.call('ZCARD', KEYS[j]) >= tonumber(ARGV[first_limit + j - n_rates - 1]) then
    reply[1], reply[2], reply[3] = 0, 1000, 'concurrency'
    return reply
  end
end
for i = 1, n_rates do
  redis.call('SET', KEYS[i], tostring(tats[i]), 'PX', math.ceil(tats[i] - now) + 1000)
end
for j = n_rates + 1, #KEYS do
  redis.call('ZADD', KEYS[j], now, request_id)
  redis.call('PEXPIRE', KEYS[j], lease)
end
return reply
"""

# KEYS: rate buckets. ARGV: per bucket interval_ms and cost to give back.
_REFUND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat then
    tat = math.max(now, tat - tonumber(ARGV[2 * i]) * tonumber(ARGV[2 * i - 1]))
    redis.call('SET', KEYS[i], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
  end
end
return 1
"""


class RedisBackend:
    name = "redis"

    def __init__(self, client: Redis, *, lease_s: float = 600.0) -> None:
        self._client = client
        self._lease_ms = round(lease_s * 1000)
        self._decide = client.register_script(_DECIDE)
        self._refund = client.register_script(_REFUND)

    async def decide(self, ask: Ask) -> Decision:
        keys = [r.key for r in ask.rates] + [s.key for s in ask.slots]
        args: list[str | int | float] = [self._lease_ms, ask.request_id, len(ask.rates)]
        for rate in ask.rates:
            args += [rate.interval_s * 1000, rate.cost]
        args += [s.limit for s in ask.slots]
        reply = await self._decide(keys=keys, args=args)
        allowed, retry_ms, refused = int(reply[0]), int(reply[1]), _text(reply[2])
        states = tuple(
            RateState(rate, int(reply[3 + 2 * i]), int(reply[4 + 2 * i]) / 1000) for i, rate in enumerate(ask.rates)
        )
        if refused.startswith("rate:"):
            refused = ask.rates[int(refused[5:]) - 1].kind
        return Decision(bool(allowed), retry_ms / 1000, states, refused or None)

    async def refund(self, rates: Sequence[Rate]) -> None:
        if rates:
            args = [x for r in rates for x in (r.interval_s * 1000, r.cost)]
            await self._refund(keys=[r.key for r in rates], args=args)

    async def release(self, slots: Sequence[Slots], request_id: str) -> None:
        if slots:
            async with self._client.pipeline(transaction=False) as pipe:
                for s in slots:
                    pipe.zrem(s.key, request_id)
                await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
