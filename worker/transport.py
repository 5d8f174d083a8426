"""kombu's Redis transport, with one client object per connection pool and
acknowledgements in bulk.

kombu builds a new ``redis.Redis`` object for every acknowledgement, every
message it reserves and every publish (``Channel._create_client``). The
object is only a handle on the channel's connection pool, but building one
costs more than the Redis command it serves: profiled here, a fifth of the
gpu worker's Python time went to acknowledging messages, half of it to
``redis.Redis.__init__``. A ``redis.Redis`` is thread-safe, so the channel
keeps one per pool and builds a new one only when kombu replaces the pool.

A gpu worker's batch acknowledges all its messages together when it is done
(``basic_ack_many``): one Redis round trip for the batch instead of one per
message, with kombu's bookkeeping kept as ``basic_ack`` keeps it.
"""

from collections.abc import Sequence
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import QoS as VirtualQoS


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client

    def basic_ack_many(self, delivery_tags: Sequence[str]) -> None:
        """``basic_ack`` for many messages of this channel, in one pipeline."""
        qos = self.qos
        with self.conn_or_acquire() as client, client.pipeline() as pipe:
            for tag in delivery_tags:
                qos._remove_from_indices(tag, pipe)
            pipe.execute()
        for tag in delivery_tags:
            VirtualQoS.ack(qos, tag)  # what the Redis QoS's ack does after its own pipeline


class Transport(kombu_redis.Transport):
    Channel = Channel
