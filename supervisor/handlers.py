"""How the supervisor answers each message it is sent: a table from message type to
handler (circus's commands, dispatched from a table), not a chain of isinstance.

Two tables. ``commands``: the typed commands of the CLI and the gateway
(``m.Command``); each is answered by one reply, which carries the command's
``call_id``, so its sender can tell it from a late answer to an earlier command.
``notices``: what the gateway and the workers report (``Hello``, ``Ready``,
``Heartbeat``, ``GatewayReport``); answered only when refused.

A handler takes the sender's id (its ZeroMQ identity: a slot id for the gateway and
the workers, ``cli-...`` for the CLI) and the message. Nothing here touches a
socket: the arbiter reads the message, calls :meth:`Handlers.handle` and sends
what it returns.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from turnout.protocol import messages as m
from turnout.supervisor.fleet import Fleet

log = structlog.get_logger()

COMMANDS: tuple[type, ...] = typing.get_args(m.Command)
NOTICES: tuple[type, ...] = tuple(t for t in typing.get_args(m.ToSupervisor) if t not in COMMANDS)

CommandHandler = Callable[[str, Any], m.CommandReply]
NoticeHandler = Callable[[str, Any], m.FromSupervisor | None]


class Handlers:
    """Options:
    fleet: the pools the handlers read and change.
    """

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.gateway_ready_logged = False
        self.commands: dict[type, CommandHandler] = {
            m.ListWorkers: self.list_workers,
            m.Status: self.status,
            m.RestartWorker: self.restart_worker,
            m.ScaleModel: self.scale,
            m.LoadModel: self.load,
            m.EvictModel: self.evict,
            m.Shutdown: self.shutdown,
        }
        self.notices: dict[type, NoticeHandler] = {
            m.Hello: self.hello,
            m.Ready: self.ready,
            m.Heartbeat: self.heartbeat,
            m.GatewayReport: self.gateway_report,
        }

    def handle(self, sender: str, msg: m.ToSupervisor) -> m.FromSupervisor | None:
        """The reply to send ``sender`` for ``msg``, or None."""
        command = self.commands.get(type(msg))
        if command is not None:
            reply = command(sender, msg)
            return msgspec.structs.replace(reply, call_id=getattr(msg, "call_id", 0))
        notice = self.notices.get(type(msg))
        if notice is None:
            log.warning("unhandled_message", type=type(msg).__name__)
            return None
        return notice(sender, msg)

    # -------------------------------------------------------------- commands

    def list_workers(self, sender: str, msg: m.ListWorkers) -> m.CommandReply:
        return m.WorkersReply(self.fleet.worker_infos())

    def status(self, sender: str, msg: m.Status) -> m.CommandReply:
        return self.fleet.status()

    def restart_worker(self, sender: str, msg: m.RestartWorker) -> m.CommandReply:
        return self.fleet.restart_worker(msg.worker_id, msg.reason)

    def scale(self, sender: str, msg: m.ScaleModel) -> m.CommandReply:
        return self.fleet.scale(msg.target, msg.workers)

    def load(self, sender: str, msg: m.LoadModel) -> m.CommandReply:
        return self.fleet.load(msg.model, unpark=msg.unpark)

    def evict(self, sender: str, msg: m.EvictModel) -> m.CommandReply:
        return self.fleet.evict(msg.model)

    def shutdown(self, sender: str, msg: m.Shutdown) -> m.CommandReply:
        log.info("stopping", requested_by="control")
        self.fleet.stopping = True
        return m.Ack("stopping")

    # --------------------------------------------------------------- notices

    def hello(self, sender: str, msg: m.Hello) -> m.FromSupervisor | None:
        if msg.protocol_version != m.PROTOCOL_VERSION:
            return m.Refused(f"protocol {msg.protocol_version} != {m.PROTOCOL_VERSION}")
        slot = self.fleet.slot(sender)
        if slot is not None and msg.role == "worker" and not slot.retiring:
            slot.state = "loading"
            self.fleet.env.publish(slot, 0)
        return None

    def ready(self, sender: str, msg: m.Ready) -> m.FromSupervisor | None:
        slot = self.fleet.slot(sender)
        if slot is None or slot.retiring:
            return None
        slot.state = "ready"
        slot.ready_at = self.fleet.clock()
        slot.last_used = slot.ready_at
        slot.last_hb_ns = self.fleet.env.now_ns()
        slot.reason = ""
        if slot.model is not None:
            self.fleet.pool_of(slot).reason = ""
        self.fleet.env.publish(slot, 0)
        if slot.kind == "gateway" and not self.gateway_ready_logged:
            self.gateway_ready_logged = True
            log.info("gateway_listening", url=f"http://{self.fleet.config.server.host}:{msg.port}")
        return None

    def heartbeat(self, sender: str, msg: m.Heartbeat) -> m.FromSupervisor | None:
        slot = self.fleet.slot(sender)
        if slot is not None:
            slot.last_hb_ns = self.fleet.env.now_ns()  # arrival: robust to clock domains
            slot.in_flight = msg.in_flight
        return None

    def gateway_report(self, sender: str, msg: m.GatewayReport) -> m.FromSupervisor | None:
        """What the gateway holds on each worker: drains and LRU rest on it."""
        now = self.fleet.clock()
        seen = set()
        for wl in msg.workers:
            slot = self.fleet.slot(wl.id)
            if slot is None or slot.kind != "worker":
                continue
            seen.add(wl.id)
            slot.gw_in_flight = wl.in_flight
            slot.gw_routing = wl.routing
            slot.gw_report_at = now
            slot.last_used = max(slot.last_used, now - wl.idle_s)
            if slot.state == "draining" and wl.routing and now - slot.drain_started > 1.0:
                self.fleet.env.publish(slot, 0)  # the gateway missed the event (it restarted): again
        for pool in self.fleet.pools.values():
            for slot in pool.slots.values():
                if slot.state == "draining" and slot.id not in seen:
                    # the gateway holds nothing there and sends it nothing
                    slot.gw_in_flight, slot.gw_routing, slot.gw_report_at = 0, False, now
        return None
