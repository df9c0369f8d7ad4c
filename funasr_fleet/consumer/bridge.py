"""The worker thread's only way to the broker: calls queued for the loop thread (dramatiq's pattern).

pika is never touched from two threads. A worker call is queued with a Future, the loop is woken
(``add_callback_threadsafe``), runs it in :meth:`Bridge.drain` and hands back the result; the
worker waits at most :data:`BRIDGE_TIMEOUT_S`. Called on the loop thread itself (``on_timeout``,
a forced stop), the call runs directly.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import pika

from funasr_fleet.consumer.broker import AMQP_ERRORS, BrokerLink
from funasr_fleet.consumer.delivery import Delivery
from funasr_fleet.errors import BrokerUnavailable

BRIDGE_TIMEOUT_S = 30.0
T = TypeVar("T")


class Bridge:
    """Thread-safe facade over a :class:`BrokerLink`: publish with confirm, ack, requeue, reject."""

    def __init__(self, link: BrokerLink) -> None:
        self._link = link
        self._requests: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._owner: int | None = None
        self.timeout_s = BRIDGE_TIMEOUT_S

    def bind_owner(self) -> None:
        """The calling thread is the loop thread (it owns the connection and drains the queue)."""
        self._owner = threading.get_ident()

    def _call(self, fn: Callable[[], T]) -> T:
        if threading.get_ident() == self._owner:
            return fn()
        future: Future[T] = Future()
        self._requests.append((fn, future))
        self._link.wake()
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise BrokerUnavailable(f"the broker did not answer within {self.timeout_s:.0f} s") from None

    def drain(self) -> None:
        """Run queued calls (loop thread only). AMQP errors are handed to the caller, then re-raised."""
        while self._requests:
            fn, future = self._requests.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except AMQP_ERRORS as exc:
                future.set_exception(BrokerUnavailable(f"broker error: {exc!r}"))
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting worker
                future.set_exception(exc)

    # --- the worker's API ------------------------------------------------------------------------
    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties, *, mandatory: bool = False
    ) -> None:
        """Publish and wait for the broker's confirm; BrokerUnavailable if it is not confirmed."""
        self._call(lambda: self._link.publish(exchange, routing_key, body, properties, mandatory=mandatory))

    def ack(self, delivery: Delivery) -> bool:
        """Ack; False when the delivery's channel is gone (the broker has requeued the message)."""
        return self._call(lambda: self._link.ack(delivery))

    def requeue(self, delivery: Delivery) -> bool:
        """Nack with requeue; False when the delivery's channel is gone."""
        return self._call(lambda: self._link.requeue(delivery))

    def reject(self, delivery: Delivery) -> bool:
        """Nack without requeue: the queue's DLX dead-letters it. False when the channel is gone."""
        return self._call(lambda: self._link.reject(delivery))
