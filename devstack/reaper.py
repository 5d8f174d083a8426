"""A supervisord event listener: what a dead process leaves behind is killed at once.

supervisord starts each program as the leader of its own process group and
kills the whole group when *it* stops a program (``stopasgroup``); when a
program dies on its own, its children are left running. A SIGKILLed gunicorn
master leaves its gevent workers holding the API's port until they notice
their parent is gone, and its replacement cannot bind meanwhile. So on every
``PROCESS_STATE_EXITED`` this listener SIGKILLs what remains of the dead
process's group before the replacement needs the port (gunicorn retries its
bind for 5 s). Celery's prefork children already die with their parent
(``PR_SET_PDEATHSIG``); this covers them anyway.
"""

import os
import signal
import sys


def parse(line: str) -> dict[str, str]:
    """supervisord's ``key:value key:value`` header and payload lines."""
    return dict(token.split(":", 1) for token in line.split())


def reap(pid: int) -> bool:
    """SIGKILL the process group ``pid`` led; whether anything was left in it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def main() -> None:
    while True:
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        header = parse(sys.stdin.buffer.readline().decode())
        payload = parse(sys.stdin.buffer.read(int(header["len"])).decode())
        if header["eventname"] == "PROCESS_STATE_EXITED" and reap(int(payload["pid"])):
            print(
                f"reaper: killed what {payload['processname']} (pid {payload['pid']}) left running",
                file=sys.stderr,
                flush=True,
            )
        sys.stdout.write("RESULT 2\nOK")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
