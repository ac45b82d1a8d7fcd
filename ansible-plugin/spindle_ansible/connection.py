"""Spindle's Ansible connection: every remote step of a task goes to the
run's Spindle controller, which keeps one SSH connection and one in-memory
agent per host. Modules run pipelined in the agent's warm interpreters;
other commands and file transfers go over the same link.

It reads the same settings as Ansible's ssh plugin (its options are the ssh
plugin's), so inventories work unchanged. Two plugin files expose it:
`connection_plugins/spindle.py` (`ansible_connection=spindle`) and
`serve_ssh/ssh.py`, which serves every host whose connection is `ssh`.
"""
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shlex
import time

import ansible.plugins.connection
from ansible import constants as C
from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display
from ansible.utils.path import makedirs_safe, unfrackpath

from spindle_ansible import client as _client
from spindle_ansible import payload as _payload

display = Display()


def load_builtin(name):
    """Ansible's own connection module `name`, loaded from its file under a
    private name: `ansible.plugins.connection.NAME` is the name Ansible
    gives whichever plugin called NAME it resolves, which may be Spindle's."""
    path = os.path.join(os.path.dirname(ansible.plugins.connection.__file__), name + ".py")
    spec = importlib.util.spec_from_file_location("_spindle_builtin_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BUILTIN_SSH = load_builtin("ssh")


def preload_module_profiles():
    """Imports the JSON profiles (ansible-core 2.19 on) every module task's
    worker would otherwise import for itself, some milliseconds a task,
    when this runs in the process that forks Ansible's workers:
    `ansible-playbook` loads every connection plugin there. (Ad hoc
    `ansible` loads it in each worker: there it would only add imports.)
    What they encode and decode is unchanged."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return
    for name in ("legacy", "modern"):
        for direction in ("c2m", "m2c"):
            try:
                importlib.import_module("ansible.module_utils._internal._json._profiles._module_%s_%s" % (name, direction))
            except Exception:
                pass


preload_module_profiles()


def documentation(name):
    """DOCUMENTATION for a plugin file exposing this connection as `name`."""
    return _BUILTIN_SSH.DOCUMENTATION.replace("name: ssh", "name: %s" % name, 1)


# Become plugins whose account switch the agent does itself, once per
# account and run (a child agent under that account). A command wrapped by
# any other (or in a way Spindle does not take apart) goes to Ansible's own
# ssh connection, which answers the plugin's prompts as in a stock run.
_SERVED_BECOME = {
    "sudo": "sudo",
    "ansible.builtin.sudo": "sudo",
    "su": "su",
    "ansible.builtin.su": "su",
    "doas": "doas",
    "community.general.doas": "doas",
}

# Ansible's interpreter discovery command (ansible-core 2.19 and later):
# `echo FOUND; command -v 'NAME'; ...; echo ENDFOUND`.
_DISCOVERY = re.compile(r"echo FOUND; ((?:command -v '[^']*'; )*)echo ENDFOUND")
_DISCOVERY_NAME = re.compile(r"command -v '([^']*)'")

def _with_control_path(args, control_path, control_path_dir, host, port, user):
    """`args` as the ssh plugin runs ssh with them: where they ask for
    ControlPersist without naming a ControlPath, the ControlPath it adds
    (`control_path`, else a digest of host, port and user, inside
    `control_path_dir`), so that Spindle's connection and stock ones share
    the master a run leaves behind, as stock runs do."""
    lowered = [a.lower() for a in args]
    if not any("controlpersist" in a for a in lowered) or any("controlpath" in a for a in lowered):
        return args
    directory = unfrackpath(control_path_dir)
    makedirs_safe(directory, 0o700)
    if not os.access(directory, os.W_OK):
        raise AnsibleError("Cannot write to ControlPath %s" % directory)
    if not control_path:
        digest = hashlib.sha1(("%s-%s-%s" % (host, port, user)).encode("utf-8")).hexdigest()
        control_path = "%(directory)s/" + digest[:10]
    return args + ["-o", 'ControlPath="%s"' % (control_path % dict(directory=directory))]


class Connection(ConnectionBase):
    transport = "spindle"
    has_pipelining = True
    # The connection Ansible would use: for commands Spindle leaves to it.
    _stock_module = _BUILTIN_SSH
    _stock_name = "ssh"
    _kind = "CONNECTION"
    # As the ssh plugin: a command that exits 255 (ssh's own code for a
    # failed connection) makes the host unreachable, after the retries the
    # plugin is configured for.
    _exit_255_unreachable = True

    def __init__(self, play_context, *args, **kwargs):
        super().__init__(play_context, *args, **kwargs)
        self._client = None
        # The last module put as a file: {remote path: content}.
        self._module_files = {}
        self._stock = None
        self._stock_args = (play_context, args, kwargs)

    def _stock_connection(self):
        """Ansible's own connection (ssh, or local) with this one's current
        settings and become plugin (made on first use): for commands whose
        become wrapping Spindle does not serve. Steps sent without waiting
        are settled first: the command may need the files they made."""
        self._call({"op": "hello"})
        return self._stock_plugin()

    def _stock_plugin(self):
        """The stock connection of `_stock_connection`, steps sent without
        waiting left as they are."""
        if self._stock is None:
            play_context, args, kwargs = self._stock_args
            self._stock = self._stock_module.Connection(play_context, *args, **kwargs)
            self._stock._load_name = self._stock_name
        self._stock._play_context = self._play_context
        self._stock._options = dict(self._options)
        self._stock.set_become_plugin(self.become)
        return self._stock

    def get_option(self, option, hostvars=None):
        if option == "pipelining":
            return self._pipelining()
        return super().get_option(option, hostvars)

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self._option_sources = (task_keys, var_options, direct)

    def _pipelining(self):
        """Modules travel pipelined, which lets them run in one round trip
        from a cached bundle, unless the user turned pipelining off (a
        setting or variable, not the default): then Ansible puts each module
        as a file, as in a stock run, and `_module_file_run` still runs its
        content in a warm interpreter. The setting's origin is looked up
        with the variables the options were set from (ansible-core 2.17
        keeps no origins of its own)."""
        keys, variables, direct = getattr(self, "_option_sources", (None, None, None))
        try:
            value, origin = C.config.get_config_value_and_origin(
                "pipelining", plugin_type="connection", plugin_name=self._load_name, keys=keys, variables=variables, direct=direct
            )
        except AnsibleError:
            return True
        return bool(value) or origin == "default"

    def _ssh_args(self):
        """The ssh arguments the ssh plugin's settings give, split."""
        args = []
        for name in ("ssh_args", "ssh_common_args", "ssh_extra_args"):
            value = self.get_option(name)
            if value:
                args.extend(shlex.split(value))
        return args

    def _target(self):
        args = self._ssh_args()
        if not self.get_option("host_key_checking"):
            args.extend(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        port = self.get_option("port")
        key = self.get_option("private_key_file")
        return {
            "host": self.get_option("host") or self._play_context.remote_addr,
            "port": int(port) if port else None,
            "user": self.get_option("remote_user"),
            "identity": os.path.expanduser(key) if key else None,
            "ssh_args": _with_control_path(
                args,
                self.get_option("control_path"),
                self.get_option("control_path_dir"),
                self._host(),
                port,
                self._login_user(),
            ),
            "ssh_executable": self.get_option("ssh_executable"),
            "timeout": int(self.get_option("timeout")),
            # Handed to ssh through SSH_ASKPASS by the controller, as the
            # ssh plugin's default password mechanism does.
            "password": self.get_option("password") or None,
        }

    def _host(self):
        return self.get_option("host") or self._play_context.remote_addr

    def _login_user(self):
        return self.get_option("remote_user")

    def _connect(self):
        if self._client is None:
            # At -vvv the controller returns the target's log records.
            self._client = _client.Client(agent_log=display.verbosity >= 3)
        if not self._connected:
            display.vvv("ESTABLISH SPINDLE %s FOR USER: %s" % (self._kind, self._login_user()), host=self._host())
        self._connected = True
        return self

    def _where(self):
        """What exec and module requests add: how and where commands run
        (the local connection's shell and directory); nothing for ssh."""
        return {}

    def _call(self, request):
        request["target"] = self._target()
        if request["op"] in ("exec", "module"):
            request.update(self._where())
        try:
            reply = self._client.call(request)
        except _client.ControllerError as e:
            if e.unreachable:
                raise AnsibleConnectionFailure(str(e))
            if e.plain:
                raise AnsibleError(str(e))
            raise AnsibleError("spindle: %s" % e)
        finally:
            for line in self._client.log:
                display.vvv("SPINDLE AGENT: %s" % line, host=self._host())
            self._client.log = []
        failed = reply.get("deferred")
        if failed is None:
            return reply
        # A step sent without waiting failed: report it as Ansible reports
        # that step, where the task would have stopped.
        out, err = _client.unb64(failed["stdout"]).decode(errors="replace"), _client.unb64(failed["stderr"]).decode(errors="replace")
        rc = failed["rc"]
        if failed["step"] == "chmod":
            raise AnsibleError("Failed to set permissions on remote files (rc: {0}, err: {1})".format(rc, err))
        if rc == 5:
            output = "Authentication failure."
        elif "No space left on device" in err:
            output = err
        else:
            command = _shell_script(failed["cmd"]) or failed["cmd"]
            output = (
                "Failed to create temporary directory. "
                "In some cases, you may have been able to authenticate and did not have permissions on the target directory. "
                'Consider changing the remote tmp path in ansible.cfg to a path rooted in "/tmp", for more error information use -vvv. '
                "Failed command was: %s, exited with result %d" % (command.rsplit(" && sleep 0", 1)[0], rc)
            )
        if out:
            output += ", stdout output: %s" % out
        if display.verbosity > 3 and err:
            output += ", stderr output: %s" % err
        raise AnsibleConnectionFailure(output)

    def set_become_plugin(self, plugin):
        super().set_become_plugin(plugin)
        if plugin is not None and plugin.name in _SERVED_BECOME:
            _watch(plugin)

    def _unwrap_become(self, cmd):
        """(command, account) for `cmd`: when it holds the command the
        current become plugin last wrapped, the same command without the
        wrapping and the account to run it as; otherwise `cmd` itself and
        the login account (None).

        Ansible hands over `EXE -c 'WRAPPED'` (with ` && sleep 0` appended
        for the default executable), or WRAPPED alone without an executable.
        """
        plugin = self.become
        last = getattr(plugin, "_spindle_last", None) if plugin is not None else None
        if last is None:
            return cmd, None
        wrapped, raw = last
        method = _SERVED_BECOME[plugin.name]
        exe = plugin.get_option("become_exe") or method
        if len(shlex.split(exe)) != 1 or _option(plugin, "sudo_chdir"):
            # A command line (`sudo su -`, say), or sudo from another
            # directory (ansible-core 2.19's `sudo_chdir`): Ansible's own
            # wrapping runs it.
            return cmd, None
        prompts = []
        if method == "su":
            prompts = list(plugin.get_option("prompt_l10n") or plugin.SU_PROMPT_LOCALIZATIONS)
        account = {
            "method": method,
            "prompts": prompts,
            "exe": exe,
            "flags": shlex.split(plugin.get_option("become_flags") or ""),
            "user": plugin.get_option("become_user") or "root",
            "password": plugin.get_option("become_pass") or None,
        }
        if cmd == wrapped:
            return raw, account
        try:
            words = shlex.split(cmd)
        except ValueError:
            return cmd, None
        if len(words) != 3 or words[1] != "-c":
            return cmd, None
        if words[2] == wrapped:
            return "%s -c %s" % (words[0], shlex.quote(raw)), account
        if words[2] == self._shell.append_command(wrapped, "sleep 0"):
            inner = self._shell.append_command(raw, "sleep 0")
            return "%s -c %s" % (words[0], shlex.quote(inner)), account
        return cmd, None

    def _known_outcome(self, cmd):
        """(rc, stdout, stderr) of a command whose outcome is known without
        waiting for it: `echo ~` (the agent's hello has the login account's
        home), or one of Ansible's temp dir steps (_DEFERRED), which the
        controller runs in order in the background; None otherwise."""
        inner = _shell_script(cmd)
        if inner is None:
            return None
        m = _ECHO_HOME.fullmatch(inner)
        if m:
            known = self._home(m.group(1))
            if known is None:
                return None
            home, source = known
            display.vvv("SPINDLE: %s (%s)" % (inner, source), host=self._host())
            return 0, (home + "\n").encode(), b""
        for step, pattern, stdout in _DEFERRED:
            if step == "chmod" and self._becoming_unprivileged():
                # Then Ansible's chmod follows a failed setfacl, and its
                # failure has words of its own: not worth predicting.
                continue
            m = pattern.fullmatch(inner)
            if m and all(_TASK_TMP in p for p in m.group("paths").split(" ")):
                display.vvv("SPINDLE: EXEC %s (not waiting)" % cmd, host=self._host())
                request = {"op": "exec", "cmd": cmd, "stdin": None, "become": None, "defer": step}
                request["shortcut"] = _shortcut(step, m)
                self._call(request)
                return 0, stdout(m).encode(), b""
        return None

    def _use_tty(self):
        return bool(self.get_option("use_tty"))

    def _tty_goodbye(self):
        """What the ssh client prints on stderr when a command it ran on a
        terminal ends: `Shared connection to HOST closed.` as a client of a
        ControlMaster (Ansible's default ssh_args), `Connection to HOST
        closed.` without one, nothing at a log level below INFO. The
        settings are ssh's own (`ssh -G` with the plugin's arguments, asked
        once per run by the controller), so the user's ssh config counts
        too."""
        args = self._ssh_args()
        request = {"op": "ssh_settings", "ssh": self.get_option("ssh_executable") or "ssh", "args": args, "host": self._host()}
        try:
            settings = self._call(request)["settings"]
        except AnsibleError:
            # Only a closing line: the command itself has run.
            settings = ""
        return _ssh_goodbye(settings, args, self._host())

    def _home(self, user):
        """(what `echo ~USER` prints, where that is known from) when known
        without running it: the login account's home from the agent's
        hello; None otherwise."""
        hello = self._call({"op": "hello"})
        if user in ("", hello["user"]) and hello.get("home", "").startswith("/"):
            return hello["home"], "from the agent's hello"
        return None

    def _becoming_unprivileged(self):
        plugin = self.become
        if plugin is None:
            return False
        user = _option(plugin, "become_user") or "root"
        return user not in ("root", self._login_user())

    def _wrapped_by_become(self, cmd):
        """Whether `cmd` carries the current become plugin's wrapping."""
        success = getattr(self.become, "success", None) if self.become is not None else None
        return bool(success) and success in cmd

    def _discovery(self, cmd):
        """The output of Ansible's interpreter discovery command, from what
        the agent looked up at start (no round trip); None if `cmd` is not
        that command or names an interpreter the agent did not look up."""
        try:
            words = shlex.split(cmd)
        except ValueError:
            return None
        if len(words) != 3 or words[1] != "-c":
            return None
        for inner in (words[2], words[2].rsplit(" && sleep 0", 1)[0]):
            match = _DISCOVERY.fullmatch(inner)
            if match:
                break
        else:
            return None
        names = _DISCOVERY_NAME.findall(match.group(1))
        probes = dict(tuple(p) for p in self._call({"op": "hello"})["probes"])
        if not names or any(n not in probes for n in names):
            return None
        found = "".join(probes[n] + "\n" for n in names if probes[n])
        return ("FOUND\n%sENDFOUND\n" % found).encode()

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if in_data is None and "ENDFOUND" in cmd:
            out = self._discovery(cmd)
            if out is not None:
                return 0, out, b""
        cmd, account = self._unwrap_become(cmd)
        if account is None and self._wrapped_by_become(cmd):
            return self._stock_connection().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if account is None and in_data is None:
            known = self._known_outcome(cmd)
            if known is not None:
                return known
        module = _pipelined_module(cmd, in_data) if in_data else self._module_file_run(cmd)
        as_user = " AS %s (%s)" % (account["user"], account["method"]) if account else ""
        # As the ssh plugin runs such a command (`ssh -tt`): on a terminal,
        # its output merged as a terminal shows it, with the TERM ssh passes
        # on. So are modules Ansible runs from a file.
        tty = not in_data and sudoable and self._use_tty()
        term = {"TERM": os.environ["TERM"]} if tty and os.environ.get("TERM") else {}
        # The command as Ansible asked for it, as the ssh plugin shows it;
        # a module's line is followed by how Spindle runs it instead.
        display.vvv("SPINDLE: EXEC %s%s" % (cmd, as_user), host=self._host())
        if module is not None:
            python, env, parts = module
            display.vvv("SPINDLE: MODULE %s WITH %s%s" % (parts["fqn"], python, as_user), host=self._host())
            # The bundle travels once per run: after that its key names it.
            zip_b64 = parts.pop("zip_b64")
            parts["zip_key"] = hashlib.sha256(zip_b64).hexdigest()
            request = {"op": "module", "python": python, "env": dict(term, **env), "module": parts}
            request["retire_users"] = _accounts_changed(parts)
        else:
            request = {"op": "exec", "cmd": cmd, "stdin": _client.b64(in_data) if in_data else None}
            if term:
                request["env"] = term
        request["pty"] = tty
        request["become"] = account
        tries = self._tries()
        for attempt in range(tries):
            reply = self._call(request)
            if reply.get("need_zip"):
                request["module"]["zip"] = zip_b64.decode("ascii")
                reply = self._call(request)
            stdout, stderr = _client.unb64(reply["stdout"]), _client.unb64(reply["stderr"])
            if request.get("pty"):
                stderr += self._tty_goodbye()
            # Only with ANSIBLE_DEBUG: a no_log task's output must not reach -vvvvv.
            display.debug("SPINDLE: (%d, %r, %r)" % (reply["rc"], stdout, stderr))
            if not self._looks_like_ssh_failure(reply["rc"], stdout, stderr):
                break
            if attempt == tries - 1:
                detail = "<error censored due to no log>" if self._play_context.no_log else stderr.decode(errors="replace").rstrip()
                raise AnsibleConnectionFailure("Failed to connect to the host via ssh: %s" % detail)
            pause = min(2**attempt - 1, 30)
            display.vv("ssh_retry: attempt: %d, ssh return code is 255. cmd (%s...), pausing for %d seconds" % (attempt + 1, cmd, pause), host=self._host())
            time.sleep(pause)
        return reply["rc"], stdout, stderr

    def _module_file_run(self, cmd):
        """As `_pipelined_module`, for a module Ansible put as a file and now
        runs (`PYTHON .../AnsiballZ_NAME.py`), as it does where it cannot
        pipeline (`su`, a become plugin without pipelining): the file's
        content, kept by `put_file`, runs as a pipelined module would, in a
        warm interpreter (on a terminal of its own where the ssh plugin
        would run the file through `ssh -tt`). The file itself was put as
        Ansible asked."""
        command = _python_command(cmd)
        if command is None or len(command[2]) != 1:
            return None
        python, env, (path,) = command
        parts = self._module_files.pop(path, None)
        if parts is None:
            return None
        return python, env, parts

    def _tries(self):
        """How often the ssh plugin would run a command that exits 255."""
        if not self._exit_255_unreachable:
            return 1
        try:
            return int(self.get_option("reconnection_retries")) + 1
        except (KeyError, AnsibleError, TypeError, ValueError):
            return 1

    def _looks_like_ssh_failure(self, rc, stdout, stderr):
        """Whether the ssh plugin would take this outcome for its own
        connection failing: status 255 without one of the outputs it knows
        to come from the command instead."""
        if rc != 255 or not self._exit_255_unreachable:
            return False
        signatures = getattr(_BUILTIN_SSH, "b_NOT_SSH_ERRORS", ())
        return not any(s in stdout or s in stderr for s in signatures)

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        if not os.path.exists(in_path):
            raise AnsibleFileNotFound("file or module does not exist: %s" % in_path)
        if _TASK_TMP in out_path and _MODULE_FILE.match(os.path.basename(out_path)):
            # A module that runs from a file: `_module_file_run` runs its
            # content when Ansible runs the file, and only then.
            with open(in_path, "rb") as f:
                data = f.read()
            try:
                parts = _payload.split(data)
            except _payload.NotAnsiballZ:
                parts = None
            self._module_files = {out_path: parts}
            splice = _splice(data, parts)
            if splice is not None:
                # Sent without waiting, as any small file into a task's temp
                # dir; the agent makes the bundle's base64 itself.
                display.vvv("SPINDLE: PUT %s TO %s (module file, not waiting)" % (in_path, out_path), host=self._host())
                self._call({"op": "put", "dst": out_path, "data": _client.b64(data), "splice": splice, "defer": "put", "scratch": True})
                return
        if _TASK_TMP in out_path and os.path.getsize(in_path) <= _INLINE_PUT:
            # Into a task's temp dir, small: the bytes travel in the request,
            # which is sent without waiting (a failure fails the task's next
            # step).
            with open(in_path, "rb") as f:
                data = f.read(_INLINE_PUT + 1)
            if len(data) <= _INLINE_PUT:
                display.vvv("SPINDLE: PUT %s TO %s (not waiting)" % (in_path, out_path), host=self._host())
                self._call({"op": "put", "dst": out_path, "data": _client.b64(data), "defer": "put", "scratch": True})
                return
        display.vvv("SPINDLE: PUT %s TO %s" % (in_path, out_path), host=self._host())
        # A task's temp file is not synced to disk (Ansible's own transfers
        # are not); anything else is.
        self._call({"op": "put", "src": in_path, "dst": out_path, "scratch": _TASK_TMP in out_path})

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv("SPINDLE: FETCH %s TO %s" % (in_path, out_path), host=self._host())
        self._call({"op": "fetch", "src": in_path, "dst": out_path})

    def reset(self):
        # As with the ssh plugin, whatever this object did so far: `meta:
        # reset_connection`, wait_for_connection and reboot reset a fresh
        # one. The host's link is dropped; the next request makes a new one.
        # Without a controller yet there is nothing to drop.
        if self._client is None:
            client = _client.Client()
            if client.attach():
                self._client = client
        if self._client is not None:
            self._call({"op": "reset"})
        # Then, as the ssh plugin resets, a ControlPersist master is asked
        # to stop (the next connection logs in afresh). Where the stock
        # plugin cannot even build its ssh command (ansible-core 2.17 wants
        # sshpass for a password, which Spindle does without), there is
        # no master of its making to stop.
        try:
            self._stock_plugin().reset()
        except AnsibleError as e:
            display.vvv("SPINDLE: no ControlPersist master stopped: %s" % e, host=self._host())

    def close(self):
        # The controller keeps the host's link for the rest of the run.
        self._connected = False
        if self._stock is not None:
            self._stock.close()


def _ssh_goodbye(settings, args, host):
    """The closing line of `ssh -tt` given what `ssh -G` printed."""
    settings = dict(line.partition(" ")[::2] for line in settings.lower().splitlines())
    if settings.get("loglevel") in ("quiet", "silent", "fatal", "error"):
        return b""
    persist = any("controlpersist" in a.lower() for a in args)
    shared = settings.get("controlmaster", "false") != "false" and (persist or settings.get("controlpath", "none") != "none")
    # ssh names the host as its config resolved it (HostName, lower case).
    name = settings.get("hostname") or host
    return ("%s to %s closed.\r\n" % ("Shared connection" if shared else "Connection", name)).encode()


def _option(plugin, name):
    """Become plugin option `name`; None where the plugin (or this
    ansible-core release) has no such option."""
    try:
        return plugin.get_option(name)
    except (KeyError, AnsibleError):
        return None


def _watch(plugin):
    """Makes `plugin` remember the last command it wrapped, so that
    exec_command can run the inner command in a child agent instead."""
    if getattr(plugin, "_spindle_watched", False):
        return
    build = plugin.build_become_command

    def build_and_remember(cmd, shell):
        wrapped = build(cmd, shell)
        plugin._spindle_last = (wrapped, cmd) if wrapped != cmd else None
        return wrapped

    plugin.build_become_command = build_and_remember
    plugin._spindle_watched = True


# Paths Spindle's known-outcome commands may name: only characters no shell
# treats specially.
_PATH = r"/[A-Za-z0-9_.,:@%+=/-]*"
# Every path of a deferred step lies in a task's temp dir.
_TASK_TMP = "/ansible-tmp-"
# Largest file put_file sends inline, without waiting.
_INLINE_PUT = 256 << 10
# The name Ansible gives a module it puts as a file.
_MODULE_FILE = re.compile(r"AnsiballZ_[A-Za-z0-9_.]+\.py$")
# ansible-core up to 2.20 appends ` && sleep 0` to every command; 2.21 not.
_SLEEP = r"(?: && sleep 0)?"
_ECHO_HOME = re.compile(r"echo ~([A-Za-z0-9_.-]*)" + _SLEEP)

# Ansible's temp dir steps for a task, as the sh shell plugin words them:
# (step, the script inside `/bin/sh -c '…'`, its output). Their outcome is
# known in advance, so they are sent without waiting (the controller keeps
# them in order and reports a failure at the next request).
_DEFERRED = (
    (
        "mkdir",
        re.compile(
            r'\( umask 77 && mkdir -p "` echo (?P<base>%s) `"&& mkdir "` echo (?P<paths>(?P=base)/(?P<name>ansible-tmp-[A-Za-z0-9_.-]+)) `" '
            r'&& echo (?P=name)="` echo (?P=paths) `" \)' % _PATH + _SLEEP
        ),
        lambda m: "%s=%s\n" % (m.group("name"), m.group("paths")),
    ),
    (
        "chmod",
        re.compile(r"chmod u\+(?P<bits>[rwx]+) (?P<paths>%s(?: %s)*)" % (_PATH, _PATH) + _SLEEP),
        lambda m: "",
    ),
    (
        "rm",
        re.compile(r"rm -f -r (?P<paths>%s) > /dev/null 2>&1" % _PATH + _SLEEP),
        lambda m: "",
    ),
)


def _shortcut(step, m):
    """What the temp dir step `m` of kind `step` does, for the agent to do
    itself where it can (see the protocol's `Shortcut`)."""
    paths = m.group("paths").split(" ")
    if step == "mkdir":
        return {"MakeDir": {"base": m.group("base"), "path": m.group("paths")}}
    if step == "chmod":
        bits = sum({"r": 0o400, "w": 0o200, "x": 0o100}[c] for c in set(m.group("bits")))
        return {"AddModeBits": {"paths": paths, "bits": bits}}
    return {"Remove": {"paths": paths}}


def _shell_script(cmd):
    """The script of `SHELL -c 'SCRIPT'`, or None."""
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    if len(words) != 3 or words[1] != "-c" or not words[0].startswith("/"):
        return None
    return words[2]


# Modules that remove or change accounts. A child agent of Spindle's running
# as such an account would be a process of it, which `userdel` and `usermod`
# refuse to work with, and which a stock run never leaves between tasks: the
# controller ends it (when idle) before the module runs.
_ACCOUNT_MODULES = ("ansible.modules.user",)


def _accounts_changed(parts):
    """The accounts the module run `parts` may remove or change."""
    if parts.get("fqn") not in _ACCOUNT_MODULES:
        return []
    try:
        args = json.loads(parts["params"]).get("ANSIBLE_MODULE_ARGS") or {}
    except (TypeError, ValueError, AttributeError):
        return []
    name = args.get("name", args.get("user"))
    return [name] if isinstance(name, str) and name else []


def _splice(data, parts):
    """Where module file `data` carries its bundle's base64 (split into
    `parts`): `{"at", "len", "zip_key"}` for the controller, which leaves
    that text for the agent to make from the bundle it keeps; None if the
    file does not carry it as one run of text."""
    if parts is None:
        return None
    text = parts["zip_b64"]
    at = data.find(text)
    if at < 0:
        return None
    return {"at": at, "len": len(text), "zip_key": hashlib.sha256(text).hexdigest()}


def _python_command(cmd):
    """(python, env, args) when `cmd` is the command Ansible runs a module
    with: `/bin/sh -c '[VAR=value ...] PYTHON [ARG ...] && sleep 0'`
    (ansible-core 2.21 leaves out ` && sleep 0`), PYTHON an absolute path;
    None otherwise."""
    try:
        outer = shlex.split(cmd)
        if len(outer) != 3 or outer[1] != "-c" or not outer[0].endswith("sh"):
            return None
        words = shlex.split(outer[2])
    except ValueError:
        return None
    if words[-3:] == ["&&", "sleep", "0"]:
        words = words[:-3]
    if any(w in ("&&", "||", ";", "|") for w in words):
        return None
    env = {}
    while words and "=" in words[0] and words[0].partition("=")[0].isidentifier():
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if not words or not words[0].startswith("/"):
        return None
    return words[0], env, words[1:]


def _pipelined_module(cmd, in_data):
    """(python, env, split payload) when `cmd` is Ansible's pipelined module
    command (a `_python_command` without arguments) and the data an
    AnsiballZ wrapper; None otherwise (then it runs as a plain command)."""
    command = _python_command(cmd)
    if command is None or command[2]:
        return None
    python, env, _ = command
    try:
        return python, env, _payload.split(in_data)
    except _payload.NotAnsiballZ:
        return None
