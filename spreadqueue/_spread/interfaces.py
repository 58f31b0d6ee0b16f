"""The contracts of the Spread layer: a session, what it sends through, what a daemon
delivers to.

Every implementation is checked with :func:`zope.interface.verify.verifyObject` in the
tests. :mod:`spreadqueue.interfaces` re-exports them for applications.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class ISpreadSession(Interface):
    """One Spread session (one private name, one mailbox), shared by many users.

    Listeners are called with the decoded frames: :class:`~spreadqueue.RegularMessage`,
    :class:`~spreadqueue.MembershipMessage` and :class:`~spreadqueue.RejectMessage`.

    A session that :attr:`reconnects` survives the loss of its daemon connection: it
    is *away* (not :attr:`connected`; :meth:`multicast` raises SessionReconnecting;
    joins, leaves, shares, listeners and waiters are kept) until a new connection has
    the same private name and the same groups again; then it is *back*. Reconnect
    listeners hear both; :meth:`whenDisconnected` means the session is gone for good.
    """

    private_group = Attribute("This session's private group, e.g. '#alice#localhost' (str).")
    name = Attribute("This session's private name, e.g. 'alice' (str).")
    daemon_name = Attribute("The name of the daemon the session is connected to (str).")
    connected = Attribute(
        "True while the session is connected: False once it is closed or lost, and while "
        "a reconnecting session is away."
    )
    reconnects = Attribute(
        "True when the session survives the loss of its daemon connection (it reconnects "
        "and tells its reconnect listeners); False for one that ends then."
    )

    def join(group):  # type: ignore[no-untyped-def]
        """Join ``group``; return a Deferred that fires (with None) once we are a member.

        With membership notices on, it fires on our own join notice; otherwise as soon
        as the join is written. Joining a group twice is harmless.
        """

    def leave(group):  # type: ignore[no-untyped-def]
        """Leave ``group``; return a Deferred that fires once we have left."""

    def acquire(group):  # type: ignore[no-untyped-def]
        """Take a share of ``group`` for one of the session's users; return a Deferred
        that fires once the session is a member.

        The session joins on the first share and leaves on the last :meth:`release`,
        so components sharing a session never take each other out of a group.
        """

    def release(group):  # type: ignore[no-untyped-def]
        """Give back a share of ``group``; the session leaves it with the last one.

        The Deferred never fails because the session is (or becomes) closed.
        """

    def holders(group):  # type: ignore[no-untyped-def]
        """How many shares of ``group`` are held (int)."""

    def view(group):  # type: ignore[no-untyped-def]
        """The latest regular MembershipMessage of a group held through
        :meth:`acquire`, or None (not held, or no notice yet).

        A component that acquires a group its session is already in gets no join
        notice of its own: this is where it learns the current members.
        """

    def after_delivery(fn):  # type: ignore[no-untyped-def]
        """Run ``fn()`` once the frames being delivered now have all been dispatched,
        in the same reactor turn and before what the listeners sent is written.

        Returns False, and schedules nothing, when no delivery is under way.
        """

    def multicast(groups, data, service=None, mess_type=0, self_discard=False):  # type: ignore[no-untyped-def]
        """Send ``data`` (bytes) to ``groups`` (a group name or a sequence of them).

        ``service`` defaults to SAFE. Raises MessageTooLong / IllegalGroupName before
        anything is written, and SessionClosed when the session is gone
        (SessionReconnecting, a SessionClosed, while a reconnecting session is away:
        what must not be lost is the sender's to keep and send again once back).
        """

    def add_listener(listener, group=None):  # type: ignore[no-untyped-def]
        """Call ``listener(frame)`` for every frame that concerns ``group``.

        A regular message concerns each group it was sent to; a membership notice
        concerns its group. With ``group=None`` the listener gets every frame once.
        """

    def remove_listener(listener, group=None):  # type: ignore[no-untyped-def]
        """Stop calling ``listener`` for ``group`` (no error if it was not registered)."""

    def receive():  # type: ignore[no-untyped-def]
        """A Deferred for the next frame this session receives (for simple scripts).

        Frames are queued for ``receive`` only after its first call.
        """

    def disconnect():  # type: ignore[no-untyped-def]
        """Close the session politely (KILL_MESS), for good (a reconnecting one stops
        reconnecting); return a Deferred that fires when closed."""

    def whenDisconnected():  # type: ignore[no-untyped-def]
        """A new Deferred that fires with None when the session ends for good: closed,
        lost (one that does not reconnect), or refused for good when reconnecting."""

    def add_reconnect_listener(listener):  # type: ignore[no-untyped-def]
        """Call ``listener(event)`` when a reconnecting session is lost and when it is
        back: ``event`` is a ``SessionLost`` (``private_group``, ``reason``) when its
        connection is lost and it starts reconnecting, then a ``SessionBack``
        (``private_group``, ``away`` seconds, ``previous_group``) once it is connected
        again and a member again of every group it was in (a connection lost again
        before that is another ``SessionLost``). A session that does not reconnect
        never calls it. Adding a listener twice has no extra effect."""

    def remove_reconnect_listener(listener):  # type: ignore[no-untyped-def]
        """Stop calling ``listener`` (no error if it was not added)."""


class ISessionLink(Interface):
    """What a :class:`~spreadqueue._spread.session.SpreadSession` sends through.

    The TCP client protocol implements it by writing wire bytes; the embedded daemon's
    in-process sessions implement it by calling the daemon directly. Names are bytes.
    """

    def send_multicast(service_type, groups, mess_type, data):  # type: ignore[no-untyped-def]
        """Send a data message; ``groups`` is a sequence of bytes names."""

    def send_join(group):  # type: ignore[no-untyped-def]
        """Send JOIN_MESS for ``group``."""

    def send_leave(group):  # type: ignore[no-untyped-def]
        """Send LEAVE_MESS for ``group``."""

    def send_kill():  # type: ignore[no-untyped-def]
        """Send KILL_MESS and close."""


class ISessionSink(Interface):
    """Where the daemon delivers one session's messages."""

    def deliver(envelope):  # type: ignore[no-untyped-def]
        """Take one :class:`~spreadqueue._spread.core.Envelope` for this session.

        Called synchronously while the daemon delivers, once per message, in the
        daemon's total order. Must not raise. It may call back into the
        :class:`~spreadqueue._spread.core.DaemonCore` (the call is queued behind the
        current delivery).
        """
