"""One Spread connection for an application's own messaging and a queue.

The script joins a chat-style group of its own and says hello there, runs a worker
and a sender of the queue on the same session, and calls the queue's ``myfunc`` (its
own worker, or any other of the queue, such as examples/worker.py, answers). Each side
sees only its own traffic: the chat listener gets the chat group's messages, the
queue's messages go to the queue's groups and the session's private group, tagged with
the queue's message types. Run
it next to ``sqm myqueue``::

    python examples/shared_session.py

It prints what the chat group said and the rpc's answer, then leaves. The queue is
$SPREAD_QUEUE_NAME (default ``myqueue``); the Spread daemon is $SPREAD_DAEMON (default
``4803@localhost``); the chat group is $CHAT_GROUP (default ``<queue>-chat``).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, task

from spreadqueue import (
    RELIABLE_MESS,
    MembershipMessage,
    RegularMessage,
    Sender,
    Worker,
    connect,
    default_queue,
    default_spread,
)

# $SPREAD_QUEUE_NAME and $SPREAD_DAEMON, as every spreadqueue command reads them.
QUEUE = default_queue("myqueue")
SPREAD = default_spread()
CHAT = os.environ.get("CHAT_GROUP") or f"{QUEUE}-chat"


async def main(reactor: Any) -> None:
    session = await connect(reactor, SPREAD)
    heard: defer.Deferred[bytes] = defer.Deferred()

    def chat(frame: object) -> None:
        # The application's own group: plain Spread messages, nothing of the queue's.
        if isinstance(frame, RegularMessage) and not heard.called:
            heard.callback(frame.data)
        elif isinstance(frame, MembershipMessage) and frame.members:
            print(f"chat: {len(frame.members)} member(s) in {CHAT}")

    session.add_listener(chat, CHAT)
    await session.join(CHAT)
    session.multicast(CHAT, f"hello from {session.private_group}".encode(), RELIABLE_MESS)
    print(f"chat: {(await heard).decode()}")

    # The queue on the very same connection.
    worker = Worker(reactor, session, QUEUE, {"myfunc": lambda args: {"response": "I heard you!"}})
    sender = Sender(reactor, session, QUEUE)
    await worker.start()
    await sender.start()
    print(f"rpc: {await sender.rpc('myfunc', {'name': 'value'}, timeout=10)}")

    await sender.stop()
    await worker.stop()
    await session.leave(CHAT)
    await session.disconnect()


if __name__ == "__main__":
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
