#!/usr/bin/env python3
"""A Python client of ws-uring, with the `websockets` package.

Connects as two users, joins a group, publishes, sends a direct message
that must be acknowledged, and handles an error. Exits non-zero if anything
did not arrive as expected.

    pip install websockets
    ./target/release/ws-uring --port 8765 &
    python3 examples/python_client.py ws://127.0.0.1:8765/ws
"""
import asyncio
import itertools
import json
import sys

import websockets

REFS = itertools.count(1)


class Client:
    """One connection as one user: commands with refs, events in order."""

    def __init__(self, ws, welcome):
        self.ws = ws
        self.welcome = welcome
        self.backlog = []

    @classmethod
    async def connect(cls, url, user):
        ws = await websockets.connect(f"{url}?user={user}", subprotocols=["wsu.v1"])
        welcome = json.loads(await ws.recv())
        assert welcome["op"] == "welcome", welcome
        return cls(ws, welcome)

    async def request(self, command):
        """Sends `command` with a ref; returns its ok, raises on its error."""
        ref = f"py{next(REFS)}"
        await self.ws.send(json.dumps({**command, "ref": ref}))
        while True:
            event = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if event.get("ref") == ref:
                if event["op"] == "error":
                    raise RuntimeError(f'{event["code"]}: {event["reason"]}')
                return event
            self.backlog.append(event)

    async def next_message(self):
        """The next msg event; acknowledges it if it asks to be."""
        while True:
            if self.backlog:
                event = self.backlog.pop(0)
            else:
                event = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if event["op"] == "msg":
                if event.get("ack"):
                    await self.ws.send(json.dumps({"op": "ack", "id": event["id"]}))
                return event


async def main(url):
    alice = await Client.connect(url, "alice-py")
    bob = await Client.connect(url, "bob-py")
    print("connected:", alice.welcome["user"], bob.welcome["user"])

    for client in (alice, bob):
        await client.request({"op": "join", "group": "py-room"})

    ok = await alice.request({"op": "publish", "group": "py-room", "data": {"text": "hello"}})
    assert ok["delivered"] == 1, ok
    msg = await bob.next_message()
    assert msg["data"] == {"text": "hello"} and msg["group"] == "py-room", msg

    ok = await alice.request(
        {"op": "send", "to": "bob-py", "data": "psst", "priority": "high", "ack": True}
    )
    msg = await bob.next_message()
    assert msg["id"] == ok["id"] and msg["ack"] is True and msg["priority"] == "high", msg
    print("direct message", ok["id"], "delivered and acked")

    try:
        await alice.request({"op": "anycast", "group": "py-nobody", "data": 1})
        raise AssertionError("expected no_members")
    except RuntimeError as e:
        assert str(e).startswith("no_members"), e
        print("refused as expected:", e)

    pong = await alice.request({"op": "ping", "t": 42})
    assert pong["t"] == 42, pong
    await alice.ws.close()
    await bob.ws.close()
    print("ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8765/ws"))
