#!/usr/bin/env python3
"""A small roost-aware service for the reliability tests (shell/tests/reliability.rs).

It speaks the child protocol of docs/child-protocol.md by hand: listeners from fd 3, 12-byte
status records on ROOST_STATUS_FD, the master-dead pipe on ROOST_MASTER_DEAD_FD, SIGINT as an
idle-kill request. One client at a time (client_limit 1), echoed line by line.

  aware.py echo      serve clients one after the other, for as long as the master lives
  aware.py garbage   first write garbage and partial records to the status pipe, then serve
  aware.py flood-log     write to stderr as fast as the pipe takes it, forever
  aware.py flood-status  write junk to the status pipe as fast as it takes it, forever
  aware.py silent    never send a status record: wait, for as long as the master lives
"""
import os
import select
import signal
import socket
import struct
import sys
import time

MODE = sys.argv[1] if len(sys.argv) > 1 else "echo"
STATUS = int(os.environ["ROOST_STATUS_FD"])
DEAD = int(os.environ["ROOST_MASTER_DEAD_FD"])
UID = int(os.environ["ROOST_PROCESS_UID"])
DIE_WITH_MASTER = os.environ.get("ROOST_SHUTDOWN_CLIENTS") == "yes"


def record(pid, uid, available):
    return struct.pack("=iII", pid, uid, available)


def report(available):
    try:
        os.write(STATUS, record(os.getpid(), UID, available))
    except OSError:
        pass


def garbage():
    """Everything a broken peer can do to the status pipe, each in its own write."""
    steps = [
        b"hello",  # 5 bytes: a partial record
        record(os.getpid(), UID + 1000, 1),  # our pid with another process uid
        record(1, 7, 1),  # a pid the master does not know: ignored
        b"\x01" * 7,  # one record split over two writes
        b"\x02" * 5,
    ]
    for chunk in steps:
        os.write(STATUS, chunk)
        time.sleep(0.1)
    for _ in range(50):
        os.write(STATUS, os.urandom(1000))
    print("Info: garbage written", file=sys.stderr, flush=True)
    time.sleep(0.3)


def flood(fd, chunk):
    """Writes `chunk` to `fd` for as long as the master lives, waiting only on a full pipe."""
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    poll.register(DEAD, 0)
    while True:
        for ready, _event in poll.poll():
            if ready == DEAD:
                sys.exit(0)
        try:
            os.write(fd, chunk)
        except BlockingIOError:
            pass


client = None


def on_sigint(_signo, _frame):
    # An idle-kill request: an idle process exits, a busy one says it is alive.
    if client is None:
        sys.exit(0)
    report(0)


signal.signal(signal.SIGINT, on_sigint)
if MODE == "garbage":
    garbage()
elif MODE == "flood-log":
    flood(2, b"flood\n" * 2000)
elif MODE == "flood-status":
    flood(STATUS, b"\x07" * 4097)
elif MODE == "silent":
    print("Info: silent: started", file=sys.stderr, flush=True)
    # poll, not select: the master's end closing is POLLERR on ours, which select's
    # exceptional set (POLLPRI) never reports, and the child outlived every test.
    gone = select.poll()
    gone.register(DEAD, 0)
    gone.poll()
    sys.exit(0)
listener = socket.socket(fileno=3)
# Non-blocking: every idle process wakes for a connection and only one gets it; a blocking
# accept() in the others would wait there, deaf to the master-dead pipe.
listener.setblocking(False)
poll = select.poll()
poll.register(listener, select.POLLIN)
# No events asked: poll still reports POLLERR when the master's read end is closed.
poll.register(DEAD, 0)
report(1)
master_gone = False
while True:
    try:
        events = poll.poll()
    except InterruptedError:
        continue
    for fd, _event in events:
        if fd == DEAD:
            master_gone = True
            poll.unregister(DEAD)
            if client is None:
                sys.exit(0)
            # Busy: the listener is not polled while a client is served; stop accepting.
            listener.close()
            if DIE_WITH_MASTER:
                sys.exit(0)
        elif client is None and fd == listener.fileno():
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                continue  # another process took it
            client.setblocking(True)
            report(0)
            poll.unregister(listener)
            poll.register(client, select.POLLIN)
        elif client is not None and fd == client.fileno():
            data = client.recv(4096)
            if data:
                client.sendall(data)
                continue
            poll.unregister(client)
            client.close()
            client = None
            if master_gone:
                sys.exit(0)
            poll.register(listener, select.POLLIN)
            report(1)
