#!/usr/bin/env python3
"""nats-server's CPU per message, paced at a fixed rate against as fast as it goes, with no
gancho in the way: the floor under the speed issue's "nats-server CPU per event at 1,000
events/s at most 1.5 times its cost when draining" target.

Each message is one JetStream publish (1 KiB, Nats-Msg-Id, PubAck awaited, 256 in flight)
and one consume + ack through an explicit pull of 128 at a time (2 s expiry), the way
gancho's worker pulls. The server is started here, on a random port and a fresh store;
its CPU (user + system) comes from /proc.

    make bench-jetstream        (or: scripts/jetstream-rate.py path/to/nats-server)
"""
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

PAYLOAD = b"x" * 1024
PULL = b'{"batch":128,"expires":2000000000}'
RUNS = [("drain", 20000, 0), ("1000/s", 20000, 1000), ("300/s", 6000, 300), ("3000/s", 30000, 3000)]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(port, pid, n, rate):
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    js = nc.jetstream()
    name = f"RATE{int(time.time() * 1000)}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"], duplicate_window=120))
    await js.add_consumer(
        name, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT)
    )
    got, in_pull = 0, 0
    done = asyncio.Event()
    inbox = nc.new_inbox()

    async def pull():
        nonlocal in_pull
        in_pull = 0
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{name}.c", PULL, reply=inbox)

    async def on_message(m):
        nonlocal got, in_pull
        if m.reply and m.reply.startswith("$JS.ACK"):
            await nc.publish(m.reply, b"+ACK")
            got += 1
            in_pull += 1
            if got >= n:
                done.set()
            elif in_pull >= 128:
                await pull()
        else:  # a status: the pull expired
            await pull()

    await nc.subscribe(inbox, cb=on_message)
    await pull()
    in_flight = asyncio.Semaphore(256)

    async def publish(i):
        async with in_flight:
            await js.publish(f"{name}.a", PAYLOAD, headers={"Nats-Msg-Id": f"m{i}"})

    start_cpu, start = cpu_seconds(pid), time.time()
    tasks = []
    for i in range(n):
        if rate:
            wait = start + i / rate - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(publish(i)))
    await asyncio.gather(*tasks)
    await done.wait()
    elapsed, used = time.time() - start, cpu_seconds(pid) - start_cpu
    await nc.close()
    return elapsed, used


async def main():
    server = sys.argv[1] if len(sys.argv) > 1 else "nats-server"
    store = tempfile.mkdtemp()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen(
        [server, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    await asyncio.sleep(1)
    try:
        for label, n, rate in RUNS:
            elapsed, used = await run(port, proc.pid, n, rate)
            print(
                f"{label:7s} {n:6d} messages in {elapsed:5.1f} s ({n / elapsed:6.0f}/s): "
                f"nats-server {used:5.2f} s of CPU, {used / n * 1e6:6.1f} us per message",
                flush=True,
            )
    finally:
        proc.kill()


asyncio.run(main())
