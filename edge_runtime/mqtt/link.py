"""The MQTT link: with its paho client (``edge_runtime.mqtt.paho_client``), the only code that
imports paho.

One ``MqttLink`` keeps one MQTT v5 connection alive on the running asyncio loop. paho's
socket callbacks are bridged into the loop (``add_reader``/``add_writer``), so every paho
callback runs on the loop thread and no lock is needed above this module. The blocking part of
a connect (TCP, TLS handshake) runs in a worker thread; its socket callbacks are marshalled
back with ``call_soon_threadsafe``.

Guarantees:
- reconnects forever with exponential backoff and jitter, so a fleet that loses its broker
  does not reconnect in lock-step;
- clean start false with a session expiry: the broker keeps subscriptions across restarts;
- QoS 1 publishes resolve a future on PUBACK; messages in flight when the link drops are
  resent by paho on the next connect, so callers must not resend them;
- a publish larger than the broker's Maximum Packet Size (from CONNACK) is refused locally
  with ``PacketTooLargeError`` instead of triggering a disconnect-and-resend loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_runtime.errors import (
    MqttError,
    NotConnectedError,
    PacketTooLargeError,
    PublishRejectedError,
)
from edge_runtime.mqtt.base import (
    AckCallback,
    ConnectionInfo,
    InboundMessage,
    LinkListener,
    LinkSettings,
    PublishOptions,
    backoff_delay,
    publish_packet_size,
)
from edge_runtime.mqtt.paho_client import LinkClient

log = structlog.get_logger("agent.mqtt")

# paho drives keepalive pings from loop_misc(). Calling it a sixth of the keepalive apart
# (at most 5 s) keeps pings on time without waking an idle agent every second.
_MISC_PERIOD_MAX_S = 5.0


class _LinkClosedError(NotConnectedError):
    """The link was closed while a publish awaited its PUBACK."""


@dataclass
class _Attempt:
    connack: asyncio.Future[ConnectionInfo]
    subscribed: list[asyncio.Future[None]] = field(default_factory=list)


class MqttLink:
    """One MQTT v5 connection, kept alive by ``run()`` until it is cancelled or closed."""

    def __init__(
        self,
        settings: LinkSettings,
        *,
        on_message: Callable[[InboundMessage], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._on_message = on_message
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._listeners: list[LinkListener] = []
        self._subscriptions: dict[str, int] = {}
        self._pending: dict[int, tuple[str, AckCallback]] = {}
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self._info: ConnectionInfo | None = None
        self._attempt: _Attempt | None = None
        self._disconnected = asyncio.Event()
        self._up = asyncio.Event()
        self._closing = False
        self._disconnect_reason = "connection lost"
        self._write_scheduled = False
        self._misc_period_s = min(_MISC_PERIOD_MAX_S, max(0.5, settings.keepalive_s / 6))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._client = self._make_client()
        # When the network loop last went round (monotonic): the systemd watchdog's evidence
        # that the link is not stuck in a hung call (agent.daemon.liveness).
        self.last_progress = time.monotonic()
        self._stall: Callable[[], None] | None = None  # test-only, see stall_for_test

    # -- public API -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._info is not None

    @property
    def info(self) -> ConnectionInfo | None:
        return self._info

    @property
    def settings(self) -> LinkSettings:
        return self._settings

    @property
    def window(self) -> int:
        """How many QoS 1 messages may await PUBACK at once on the current connection."""
        limit = self._info.receive_maximum if self._info else self._settings.max_inflight
        return max(1, min(self._settings.max_inflight, limit))

    def set_message_handler(self, handler: Callable[[InboundMessage], None]) -> None:
        """Called on the loop thread for every message received; must not block."""
        self._on_message = handler

    def add_listener(self, listener: LinkListener) -> None:
        self._listeners.append(listener)

    def add_subscription(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again on every later connect."""
        self._subscriptions[topic_filter] = qos
        if self.connected:
            self._send_subscribe({topic_filter: qos})

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        options: PublishOptions | None = None,
    ) -> asyncio.Future[None]:
        """Send one message; the future resolves on PUBACK (at once for QoS 0).

        Raises:
            NotConnectedError: the link is down; nothing was queued.
            PacketTooLargeError: the broker's Maximum Packet Size would be exceeded.
            MqttError: paho refused the publish.
        """
        assert self._loop is not None or self._info is None
        future: asyncio.Future[None] = (
            self._loop.create_future() if self._loop else asyncio.get_running_loop().create_future()
        )

        def settle(error: MqttError | None) -> None:
            if future.done():
                return
            if isinstance(error, _LinkClosedError):
                future.cancel()
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(None)

        self.publish_tracked(topic, payload, settle, qos=qos, retain=retain, options=options)
        return future

    def publish_tracked(
        self,
        topic: str,
        payload: bytes,
        on_ack: AckCallback,
        *,
        qos: int = 1,
        retain: bool = False,
        options: PublishOptions | None = None,
    ) -> None:
        """Like ``publish``, but ``on_ack(error or None)`` is called on the loop thread at PUBACK.

        No future per message: the hot path of draining a backlog. ``error`` is a
        ``PublishRejectedError`` for a failure reason code, or ``NotConnectedError`` when the
        link is closed before the PUBACK came.
        """
        info = self._info
        if info is None or self._loop is None:
            raise NotConnectedError(f"not connected to {self._settings.host}:{self._settings.port}")
        properties = _publish_properties(options)
        packed = len(properties.pack()) if properties is not None else 0  # type: ignore[no-untyped-call]
        size = publish_packet_size(topic, len(payload), qos, packed)
        if info.max_packet_size is not None and size > info.max_packet_size:
            raise PacketTooLargeError(topic=topic, size=size, limit=info.max_packet_size)
        result = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if result.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_QUEUE_SIZE):
            raise MqttError(f"publish to {topic!r} failed: {paho.error_string(result.rc)}")
        self._schedule_write()
        if qos == 0:
            on_ack(None)
        else:
            self._pending[result.mid] = (topic, on_ack)

    def ack(self, message: InboundMessage) -> None:
        """Acknowledge a message received with ``manual_ack``; a no-op for QoS 0."""
        if self._settings.manual_ack and message.qos > 0 and self.connected:
            self._client.ack(message.mid, message.qos)

    def _schedule_write(self) -> None:
        """Write queued packets on the next loop pass instead of waiting for a writable event.

        The socket is almost always writable, so this saves an epoll round per publish; several
        publishes in one pass share one write. If the socket is full, paho keeps the rest and
        the registered writer sends it later.
        """
        if not self._write_scheduled and self._loop is not None:
            self._write_scheduled = True
            self._loop.call_soon(self._write_now)

    def _write_now(self) -> None:
        self._write_scheduled = False
        if self._info is not None:
            self._client.loop_write()

    async def wait_subscribed(self, timeout: float | None = None) -> None:
        """Wait for the SUBACKs of every subscription sent so far on this connection."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(*self._subacks.values())

    async def wait_connected(self, timeout: float | None = None) -> ConnectionInfo:
        """Wait until the link is up; raises ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while self._info is None:
                await self._up.wait()
            return self._info

    async def run(self) -> None:
        """Connect, and reconnect after every loss, until cancelled or ``close()`` is called."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        failures = 0
        while not self._closing:
            self.last_progress = time.monotonic()
            try:
                info = await self._connect_once()
            except (OSError, MqttError, TimeoutError, ssl.SSLError) as exc:
                delay = backoff_delay(
                    failures,
                    self._settings.reconnect_min_s,
                    self._settings.reconnect_max_s,
                    self._rng,
                )
                failures += 1
                log.warning(
                    "mqtt.connect_failed",
                    host=self._settings.host,
                    port=self._settings.port,
                    error=str(exc) or type(exc).__name__,
                    retry_in_s=round(delay, 2),
                )
                await self._backoff(delay)
                continue
            failures = 0
            await self._serve(info)

    async def _backoff(self, delay: float) -> None:
        # In slices, so that a long backoff (idle by design) still shows progress.
        end = time.monotonic() + delay
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, self._misc_period_s))
            self.last_progress = time.monotonic()

    def stall_for_test(self, block: Callable[[], None]) -> None:
        """Test-only (``agent.daemon.watchdog``): drop the connection and hang the next
        connect attempt in ``block``, so the reconnect loop is stuck in a hung call."""
        self._stall = block
        self._client.disconnect()

    async def close(self, timeout: float = 3.0) -> None:
        """Disconnect cleanly (the broker then discards the Last Will)."""
        self._closing = True
        if self._info is not None:
            self._disconnected.clear()
            self._client.disconnect(
                reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection")
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._disconnected.wait()
        pending, self._pending = self._pending, {}
        for _topic, on_ack in pending.values():
            on_ack(_LinkClosedError("link closed before PUBACK"))

    # -- connection lifecycle ---------------------------------------------------------------

    async def _connect_once(self) -> ConnectionInfo:
        assert self._loop is not None
        self._attempt = _Attempt(connack=self._loop.create_future())
        self._disconnected.clear()
        s = self._settings
        self._client.connect_async(
            s.host,
            s.port,
            keepalive=s.keepalive_s,
            clean_start=s.clean_start,
            properties=self._connect_properties(),
        )
        try:
            if self._stall is not None:
                await asyncio.to_thread(self._stall)
            rc = await asyncio.to_thread(self._client.reconnect)
            if rc != paho.MQTT_ERR_SUCCESS:
                raise MqttError(f"connect failed: {paho.error_string(rc)}")
            async with asyncio.timeout(s.connect_timeout_s):
                return await self._attempt.connack
        except BaseException:
            self._attempt = None
            self._client.disconnect()
            raise

    async def _serve(self, info: ConnectionInfo) -> None:
        self._info = info
        self._up.set()
        log.info(
            "mqtt.connected",
            host=self._settings.host,
            port=self._settings.port,
            session_present=info.session_present,
            max_packet_size=info.max_packet_size,
            receive_maximum=info.receive_maximum,
        )
        if self._subscriptions:
            self._send_subscribe(dict(self._subscriptions))
        for listener in list(self._listeners):
            listener.link_up(info)
        try:
            while not self._disconnected.is_set():
                self.last_progress = time.monotonic()
                self._client.loop_misc()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._misc_period_s):
                        await self._disconnected.wait()
        finally:
            self._info = None
            self._up.clear()
        reason = self._disconnect_reason
        if self._closing:
            log.info("mqtt.disconnected", reason=reason)
        else:
            log.warning("mqtt.disconnected", reason=reason)
        for listener in list(self._listeners):
            listener.link_down(reason)

    def _connect_properties(self) -> Properties:
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._settings.session_expiry_s
        return props

    def _send_subscribe(self, filters: dict[str, int]) -> None:
        topics = [(f, SubscribeOptions(qos=q)) for f, q in filters.items()]
        rc, mid = self._client.subscribe(topics)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            log.error("mqtt.subscribe_failed", filters=list(filters), error=paho.error_string(rc))
            return
        assert self._loop is not None
        self._subacks[mid] = self._loop.create_future()

    # -- paho client and callbacks (all on the loop thread, see module docstring) -------------

    def _make_client(self) -> paho.Client:
        s = self._settings
        client = LinkClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
            manual_ack=s.manual_ack,
        )
        client.connect_timeout = s.connect_timeout_s
        client.max_inflight_messages_set(s.max_inflight)
        # We pace publishes ourselves (bounded window), so paho's queue never grows unbounded.
        client.max_queued_messages_set(0)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls is not None:
            client.tls_set(
                ca_certs=str(s.tls.ca_file),
                certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                keyfile=str(s.tls.key_file) if s.tls.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if s.will is not None:
            will_props = _properties(PacketTypes.WILLMESSAGE)
            will_props.WillDelayInterval = s.will.delay_s
            client.will_set(
                s.will.topic,
                s.will.payload,
                qos=s.will.qos,
                retain=s.will.retain,
                properties=will_props,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_paho_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the loop thread: now if we are on it, else as soon as possible."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        # Request/response traffic (commands, repository file chunks) sends a small packet
        # right after another; with Nagle's algorithm on, each one waits for the delayed ACK
        # of the previous (about 40 ms on Linux).
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._on_loop(self._add_reader, sock.fileno())

    def _add_reader(self, fd: int) -> None:
        assert self._loop is not None
        self._loop.add_reader(fd, self._client.loop_read)

    def _on_socket_close(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._on_loop(self._loop.remove_reader, sock.fileno())

    def _on_socket_register_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._on_loop(self._add_writer, sock.fileno())

    def _add_writer(self, fd: int) -> None:
        assert self._loop is not None
        self._loop.add_writer(fd, self._client.loop_write)

    def _on_socket_unregister_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._on_loop(self._loop.remove_writer, sock.fileno())

    def _on_connect(
        self,
        _client: paho.Client,
        _userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        attempt = self._attempt
        if attempt is None or attempt.connack.done():
            return
        if reason_code.is_failure:
            attempt.connack.set_exception(
                MqttError(f"broker refused the connection: {reason_code.getName()}")
            )
            return
        max_packet = getattr(properties, "MaximumPacketSize", None) if properties else None
        receive_max = getattr(properties, "ReceiveMaximum", 65535) if properties else 65535
        attempt.connack.set_result(
            ConnectionInfo(
                session_present=flags.session_present,
                max_packet_size=max_packet,
                receive_maximum=receive_max,
            )
        )

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._disconnect_reason = reason_code.getName()
        attempt = self._attempt
        if attempt is not None and not attempt.connack.done():
            attempt.connack.set_exception(
                MqttError(f"connection closed before CONNACK: {reason_code.getName()}")
            )
        self._disconnected.set()

    def _on_publish(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties,
    ) -> None:
        entry = self._pending.pop(mid, None)
        if entry is None:
            return
        topic, on_ack = entry
        if reason_code.is_failure:
            on_ack(
                PublishRejectedError(
                    topic=topic, reason=reason_code.getName(), code=reason_code.value
                )
            )
        else:
            on_ack(None)

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)
        refused = [rc.getName() for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("mqtt.subscribe_refused", reasons=refused)

    def _on_paho_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._on_message is None:
            return
        props = msg.properties
        message = InboundMessage(
            topic=msg.topic,
            payload=msg.payload,
            qos=msg.qos,
            retain=bool(msg.retain),
            response_topic=getattr(props, "ResponseTopic", None) if props else None,
            correlation_data=getattr(props, "CorrelationData", None) if props else None,
            mid=msg.mid,
            user_properties=_user_properties(props),
        )
        try:
            self._on_message(message)
        except Exception:
            # A handler bug must not tear down the connection for every other message.
            log.exception("mqtt.handler_failed", topic=msg.topic)


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it unannotated


def _publish_properties(options: PublishOptions | None) -> Properties | None:
    if options is None:
        return None
    props = _properties(PacketTypes.PUBLISH)
    if options.response_topic is not None:
        props.ResponseTopic = options.response_topic
    if options.correlation_data is not None:
        props.CorrelationData = options.correlation_data
    if options.message_expiry_s is not None:
        props.MessageExpiryInterval = options.message_expiry_s
    if options.content_type is not None:
        props.ContentType = options.content_type
    if options.user_properties:
        props.UserProperty = list(options.user_properties)
    return props


def _user_properties(props: Properties | None) -> tuple[tuple[str, str], ...]:
    """The v5 user properties of a received message, in the order they were sent."""
    pairs = getattr(props, "UserProperty", None) if props else None
    return tuple((str(key), str(value)) for key, value in pairs or ())
