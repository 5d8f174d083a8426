"""kombu's Redis transport, with one client object per connection pool.

kombu builds a new ``redis.Redis`` object for every acknowledgement, every
message it reserves and every publish (``Channel._create_client``). The
object is only a handle on the channel's connection pool, but building one
costs more than the Redis command it serves: profiled here, a fifth of the
gpu worker's Python time went to acknowledging messages, half of it to
``redis.Redis.__init__``. A ``redis.Redis`` is thread-safe, so the channel
keeps one per pool and builds a new one only when kombu replaces the pool.
"""

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
