"""The plugin's side of the controller socket: finds or starts the
controller of this ``ansible-playbook`` run and exchanges requests with it.

One controller serves the whole run: it is started by the first worker that
needs it, listens on a UNIX socket in a private 0700 directory named after
the run's main process, and exits when that process does.
"""
import base64
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time

__all__ = ["Client", "ControllerError"]


class ControllerError(Exception):
    def __init__(self, message, unreachable, plain=False):
        super().__init__(message)
        self.unreachable = unreachable
        # The message is meant for the user as it is (as stock Ansible
        # words it), not as a Spindle error.
        self.plain = plain


def _private_dir():
    path = os.path.join(tempfile.gettempdir(), "spindle-%d" % os.getuid())
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ControllerError("%s must be a directory private to this user" % path, False)
    return path


def _run_pid():
    """The run's process: Ansible runs connection plugins in worker
    processes it forks, except for `meta: reset_connection`, which the
    run's own process carries out."""
    import multiprocessing
    if multiprocessing.parent_process() is None:
        return os.getpid()
    return os.getppid()


def _sweep(where):
    """Removes the sockets and lock files of runs that are gone (a
    controller killed with its run cannot remove its own); logs stay."""
    for name in os.listdir(where):
        pid, dot, rest = name.partition(".")
        if not dot or rest not in ("sock", "sock.lock") or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue
        except ProcessLookupError:
            pass
        except OSError:
            continue  # alive, someone else's
        try:
            os.unlink(os.path.join(where, name))
        except OSError:
            pass


def _spindle_binary():
    """SPINDLE_BIN, else the binary an installed package ships, else
    `spindle` on PATH, else a build in the checkout this file is in."""
    here = os.path.dirname(os.path.abspath(__file__))
    shipped = os.path.join(here, "bin", "spindle")
    found = os.environ.get("SPINDLE_BIN") or (
        shipped if os.access(shipped, os.X_OK) else shutil.which("spindle")
    )
    if found:
        return found
    for build in ("release", "debug"):
        candidate = os.path.join(here, "..", "..", "target", build, "spindle")
        if os.access(candidate, os.X_OK):
            return os.path.normpath(candidate)
    raise ControllerError("spindle binary not found: install it on PATH or set SPINDLE_BIN", False)


class Client(object):
    """A connection to the run's controller, opened on first use."""

    def __init__(self, run_pid=None, agent_log=False):
        self.run_pid = run_pid or _run_pid()
        self.sock = None
        # Whether a controller this client starts keeps the agents' log
        # records; those that came with the last reply.
        self.agent_log = agent_log
        self.log = []

    def _path(self):
        return os.path.join(_private_dir(), "%d.sock" % self.run_pid)

    def attach(self):
        """Connects to the run's controller if it is running; whether it is."""
        if self.sock is None:
            self.sock = self._try(self._path())
        return self.sock is not None

    def _connect(self):
        path = self._path()
        sock = self._try(path)
        if sock is None:
            with open(path + ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                sock = self._try(path)
                if sock is None:
                    sock = self._start(path)
        self.sock = sock

    @staticmethod
    def _try(path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            return None

    def _start(self, path):
        if os.path.exists(path):
            os.unlink(path)  # left by a controller that died
        _sweep(os.path.dirname(path))
        log = open(path[: -len(".sock")] + ".log", "ab")
        argv = [_spindle_binary(), "serve", "--socket", path, "--parent-pid", str(self.run_pid)]
        if self.agent_log:
            argv.append("--agent-log")
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            sock = self._try(path)
            if sock is not None:
                return sock
            time.sleep(0.01)
        raise ControllerError("the spindle controller did not start (see %s.log)" % path[:-5], False)

    def call(self, request):
        if self.sock is None:
            self._connect()
        body = json.dumps(request).encode("utf-8")
        try:
            self.sock.sendall(struct.pack(">I", len(body)) + body)
            header = self._recv(4)
            reply = json.loads(self._recv(struct.unpack(">I", header)[0]).decode("utf-8"))
        except (OSError, EOFError) as e:
            self.close()
            raise ControllerError("lost the spindle controller: %s" % e, True)
        self.log = reply.pop("agent_log", [])
        if "error" in reply:
            raise ControllerError(reply["error"], reply.get("unreachable", False), reply.get("plain", False))
        return reply

    def _recv(self, n):
        parts = []
        while n:
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                raise EOFError("controller closed the connection")
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def b64(data):
    return base64.b64encode(data).decode("ascii")


def unb64(text):
    return base64.b64decode(text)
