"""Put on PYTHONPATH by tests/test_no_egress.py only: every Python process of the
no-egress run records each attempt to reach, or to look up, a host that is not
this machine's loopback.

An audit hook (PEP 578) sees the standard library's socket calls, whichever
library makes them, and a failure that the caller swallows (in a network
namespace with only loopback, a connect fails at once). Sockets opened in C
(libpq, gRPC's core) are not seen here: the namespace is the guard for those.
"""

import ipaddress
import json
import os
import socket
import sys

ATTEMPTS = os.environ["CONVOQ_EGRESS_LOG"]
INSTALLED = os.environ["CONVOQ_EGRESS_INSTALLED"]
INET = (socket.AF_INET, socket.AF_INET6)


def _hosts_file_loopback_names() -> set[str]:
    names = {"localhost"}
    try:
        with open("/etc/hosts") as hosts:
            for line in hosts:
                fields = line.split("#", 1)[0].split()
                if fields and _is_loopback_address(fields[0]):
                    names.update(name.lower() for name in fields[1:])
    except OSError:
        pass
    return names


def _is_loopback_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


LOCAL_NAMES = _hosts_file_loopback_names()


def _is_local(host: object) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the wildcard or loopback
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]")
    return host == "" or host.lower() in LOCAL_NAMES or _is_loopback_address(host)


def _command_line() -> list[str]:
    # sys.argv is not set yet while site runs.
    with open("/proc/self/cmdline", "rb") as cmdline:
        return cmdline.read().decode(errors="replace").split("\0")[:-1]


def _record(event: str, host: object) -> None:
    entry = {"pid": os.getpid(), "argv": COMMAND[:6], "event": event, "host": repr(host)}
    with open(ATTEMPTS, "a") as log:
        log.write(json.dumps(entry) + "\n")


def _audit(event: str, args: tuple) -> None:
    if not event.startswith("socket."):
        return
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[1]
        if sock.family in INET and address is not None and not _is_local(address[0]):
            _record(event, address)
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        if not _is_local(args[0]):
            _record(event, args[0])
    elif event == "socket.getnameinfo" and not _is_local(args[0][0]):
        _record(event, args[0])


COMMAND = _command_line()
sys.addaudithook(_audit)
with open(INSTALLED, "a") as installed:
    installed.write(json.dumps({"pid": os.getpid(), "argv": COMMAND}) + "\n")
