"""Conversation memory in Redis (`memory: {backend: redis, url: ...}`), on redis-py's asyncio
client: shared by every worker that reaches the server, and it outlives the process.

A session is one Redis list of JSON messages. An append is one MULTI/EXEC transaction (RPUSH
of the whole batch, the TTL renewed, the session's last use recorded), so two writers never
lose or split each other's messages. Every operation is bounded by `timeout_s`; a server
that is down, slow or refuses the password is an error naming the URL, never the password.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import RunnerError
from .models import Message
from .redact import redact_text

__all__ = ["RedisOptions", "RedisMemory"]


class RedisOptions(BaseModel):
    """Options of the redis memory backend."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)
    url: str = Field("redis://127.0.0.1:6379/0", pattern=r"^(redis|rediss|unix)://")
    """The server: `redis://[:password@]host:port/db`, `rediss://` for TLS (put the password
    in a `${VAR}`: it is masked everywhere)."""
    ttl_s: int | None = Field(None, ge=1)
    """A session untouched this long is forgotten (renewed on every write); unset: kept."""
    timeout_s: float = Field(5.0, gt=0, le=300)
    """Deadline of one operation, connecting included."""
    prefix: str = Field("runner:memory:", min_length=1, max_length=100)
    """The prefix of the keys this memory uses."""


class RedisMemory:
    """Memory in Redis, one list per session (see the module docstring)."""

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self.url = redact_text(options.url, ())  # what messages show: the password masked
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            t = self.options.timeout_s
            self._client = aioredis.from_url(self.options.url, socket_timeout=t,
                                             socket_connect_timeout=t, decode_responses=True)
        return self._client

    def _key(self, session: str) -> str:
        return self.options.prefix + session

    async def _do(self, what: str, op: Any) -> Any:
        """Run one operation under the deadline, its failures translated."""
        import redis.exceptions as rx

        try:
            return await asyncio.wait_for(op(self._redis()), self.options.timeout_s)
        except asyncio.TimeoutError:
            raise RunnerError(f"memory store {self.url}: no answer within "
                              f"{self.options.timeout_s:g}s ({what})") from None
        except rx.AuthenticationError:
            raise RunnerError(f"memory store {self.url}: the server refused the password "
                              f"({what})") from None
        except rx.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise RunnerError(f"memory store {self.url}: the server wants a password, or "
                                  f"another one ({what})") from None
            raise RunnerError(f"memory store {self.url}: {exc} ({what})") from None
        except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
            raise RunnerError(f"memory store {self.url}: cannot reach the server "
                              f"({type(exc).__name__}; {what})") from None

    async def load(self, session: str, window: int | None = None) -> list[Message]:
        key = self._key(session)
        start = -window if window else 0
        rows = await self._do("load", lambda r: r.lrange(key, start, -1))
        messages: list[Message] = []
        for row in rows:
            try:
                m = json.loads(row)
            except ValueError:
                continue  # not ours (another program's key under our prefix): skipped
            if isinstance(m, dict) and isinstance(m.get("role"), str):
                messages.append({"role": m["role"], "content": str(m.get("content", ""))})
        return messages

    async def append(self, session: str, messages: list[Message]) -> None:
        if not messages:
            return
        key, ttl = self._key(session), self.options.ttl_s
        rows = [json.dumps({"role": m["role"], "content": str(m["content"])},
                           ensure_ascii=False) for m in messages]

        async def write(r: Any) -> Any:
            async with r.pipeline(transaction=True) as pipe:
                pipe.rpush(key, *rows)
                pipe.zadd(self.options.prefix + "\x00sessions", {session: time.time()})
                if ttl:
                    pipe.expire(key, ttl)
                return await pipe.execute()

        await self._do("append", write)

    async def clear(self, session: str) -> None:
        key = self._key(session)

        async def drop(r: Any) -> Any:
            async with r.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.zrem(self.options.prefix + "\x00sessions", session)
                return await pipe.execute()

        await self._do("clear", drop)

    async def sessions(self) -> list[dict[str, Any]]:
        """Each session with its message count and last use (sessions a TTL ended are left
        out, and forgotten)."""
        index = self.options.prefix + "\x00sessions"

        async def scan(r: Any) -> Any:
            found = await r.zrange(index, 0, -1, withscores=True)
            async with r.pipeline(transaction=False) as pipe:
                for name, _ in found:
                    pipe.llen(self._key(name))
                counts = await pipe.execute()
            gone = [name for (name, _), n in zip(found, counts) if not n]
            if gone:
                await r.zrem(index, *gone)
            return [{"session": name, "messages": n, "last_used": used}
                    for (name, used), n in zip(found, counts) if n]

        return await self._do("list sessions", scan)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await asyncio.wait_for(client.aclose(), self.options.timeout_s)
            except Exception:  # closing a connection that already broke
                pass
