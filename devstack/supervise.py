"""``make run``'s processes under supervisord: the ``Procfile`` made a supervisord config.

The Procfile stays the one table of the local processes (tests/test_deploy.py
checks it against the compose file and the manifests); this module writes it
out as ``supervisord.conf`` in the data directory. supervisord restarts a
process that dies (at once; ``RESTART_BOUND_SECONDS`` is what we promise),
logs ``exited: NAME (terminated by SIGKILL; not expected)`` on the terminal,
and on SIGINT or SIGTERM stops every process group. Its control socket in the
data directory serves ``supervisorctl -c .devstack/supervisord.conf status``
(or ``restart worker-gpu``) and :func:`program_pids`.
"""

import configparser
import os
import secrets
import shlex
import stat
import sys
import xmlrpc.client
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

from devstack.stack import ROOT

PROCFILE = ROOT / "Procfile"
CONTROL_USER = "convoq"
# A process that dies is started again within this (supervisord notices the
# exit within its 1 s loop; tests/test_local_stack.py checks it).
RESTART_BOUND_SECONDS = 10
# How long a process may take to stop on SIGTERM before the SIGKILL: a gunicorn
# finishes its requests within its graceful_timeout (10 s), a worker its tasks.
STOP_WAIT_SECONDS = 30


def read_procfile(path: Path = PROCFILE) -> dict[str, str]:
    """``{name: shell command}``, in the file's order."""
    processes = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = command.strip()
    return processes


def _value(text: str) -> str:
    # supervisord expands %(name)s in its values: a literal % is %%.
    return text.replace("%", "%%")


def _program(name: str, command: str) -> list[str]:
    # Through sh for the Procfile's ${VAR:-default}; exec (via env, which also
    # takes the leading VAR=value words), so supervisord's child is the process
    # itself and its exit status is the one logged.
    shell_command = shlex.join(["/bin/sh", "-c", f"exec env {command}"])
    return [
        f"[program:{name}]",
        f"command={_value(shell_command)}",
        f"directory={_value(str(ROOT))}",
        "autostart=true",
        "autorestart=true",
        "startsecs=1",
        # A process that keeps failing to start is given up on after this many tries.
        "startretries=5",
        "stopsignal=TERM",
        f"stopwaitsecs={STOP_WAIT_SECONDS}",
        "stopasgroup=true",
        "killasgroup=true",
        # The process's own output, as it writes it, on the terminal.
        "stdout_logfile=/dev/stdout",
        "stdout_logfile_maxbytes=0",
        "redirect_stderr=true",
        "",
    ]


def supervisord_config(processes: dict[str, str], data_dir: Path, password: str) -> str:
    data_dir = data_dir.resolve()
    reaper = shlex.join([sys.executable, "-m", "devstack.reaper"])
    socket = _value(str(data_dir / "supervisor.sock"))
    control = [f"username={CONTROL_USER}", f"password={_value(password)}"]
    lines = [
        "[unix_http_server]",
        f"file={socket}",
        "chmod=0700",
        *control,
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{socket}",
        *control,
        "",
        "[supervisord]",
        "nodaemon=true",
        # In the foreground supervisord logs to the terminal too; the file keeps a copy.
        f"logfile={_value(str(data_dir / 'supervisord.log'))}",
        "logfile_maxbytes=10MB",
        "logfile_backups=1",
        "loglevel=info",
        f"pidfile={_value(str(data_dir / 'supervisord.pid'))}",
        f"childlogdir={_value(str(data_dir))}",
        "",
    ]
    for name, command in processes.items():
        lines += _program(name, command)
    lines += [
        "[eventlistener:reaper]",
        f"command={_value(reaper)}",
        f"directory={_value(str(ROOT))}",
        "events=PROCESS_STATE_EXITED",
        "autorestart=true",
        "stderr_logfile=/dev/stderr",
        "stderr_logfile_maxbytes=0",
        "",
    ]
    return "\n".join(lines)


def config_path(data_dir: Path) -> Path:
    return data_dir / "supervisord.conf"


def write_config(data_dir: Path, procfile: Path = PROCFILE) -> Path:
    """The Procfile as ``<data_dir>/supervisord.conf`` (readable by its owner only: it
    holds the control socket's password); its path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = config_path(data_dir)
    path.touch(mode=stat.S_IRUSR | stat.S_IWUSR)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    password = secrets.token_urlsafe(18)
    path.write_text(supervisord_config(read_procfile(procfile), data_dir, password))
    return path


def program_pids(data_dir: Path) -> dict[str, int]:
    """``{program: pid}`` of the running programs of the supervisord of ``data_dir``."""
    parser = configparser.RawConfigParser()
    parser.read(config_path(data_dir))
    section = parser["supervisorctl"]
    transport = SupervisorTransport(section["username"], section["password"], section["serverurl"])
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    return {
        info["name"]: info["pid"]
        for info in proxy.supervisor.getAllProcessInfo()
        if info["statename"] == "RUNNING"
    }
