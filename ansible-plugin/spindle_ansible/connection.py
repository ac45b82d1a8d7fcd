"""Spindle's Ansible connection: every remote step of a task goes to the
run's Spindle controller, which keeps one SSH connection and one in-memory
agent per host. Modules run pipelined in the agent's warm interpreters;
other commands and file transfers go over the same link.

It reads the same settings as Ansible's ssh plugin (its options are the ssh
plugin's), so inventories work unchanged. Two plugin files expose it:
`connection_plugins/spindle.py` (`ansible_connection=spindle`) and
`serve_ssh/ssh.py`, which serves every host whose connection is `ssh`.
"""
import importlib.util
import json
import os
import re
import shlex

import ansible.plugins.connection
from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.plugins.connection import ConnectionBase

from spindle_ansible import client as _client
from spindle_ansible import payload as _payload


def _load_builtin_ssh():
    """Ansible's own ssh connection module, loaded from its file under a
    private name: `ansible.plugins.connection.ssh` is the name Ansible gives
    whichever `ssh` plugin it resolves, which may be Spindle's."""
    path = os.path.join(os.path.dirname(ansible.plugins.connection.__file__), "ssh.py")
    spec = importlib.util.spec_from_file_location("_spindle_builtin_ssh", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BUILTIN_SSH = _load_builtin_ssh()


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

# ssh options that would make our ssh a long-lived multiplexing master; the
# controller already keeps exactly one connection per host for the run.
_MUX_OPTIONS = ("controlmaster", "controlpersist", "controlpath")


def _without_mux(args):
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        opt = None
        if a == "-o" and i + 1 < len(args):
            opt, skip = args[i + 1], True
        elif a.startswith("-o"):
            opt = a[2:]
        if opt is not None and opt.strip().lower().startswith(_MUX_OPTIONS):
            continue
        if opt is not None and a == "-o":
            out.extend([a, opt])
        else:
            out.append(a)
    return out


class Connection(ConnectionBase):
    transport = "spindle"
    has_pipelining = True

    def __init__(self, play_context, *args, **kwargs):
        super().__init__(play_context, *args, **kwargs)
        self._client = None
        self._stock = None
        self._stock_args = (play_context, args, kwargs)

    def _stock_ssh(self):
        """Ansible's ssh connection with this one's settings, made on first
        use: for commands whose become wrapping Spindle does not serve."""
        if self._stock is None:
            play_context, args, kwargs = self._stock_args
            stock = _BUILTIN_SSH.Connection(play_context, *args, **kwargs)
            stock._load_name = "ssh"
            stock._options = dict(self._options)
            stock.set_become_plugin(self.become)
            self._stock = stock
        return self._stock

    def get_option(self, option, hostvars=None):
        # Modules always travel pipelined: that is what lets them run in one
        # round trip from a cached bundle.
        if option == "pipelining":
            return True
        return super().get_option(option, hostvars)

    def _target(self):
        args = []
        for name in ("ssh_args", "ssh_common_args", "ssh_extra_args"):
            value = self.get_option(name)
            if value:
                args.extend(shlex.split(value))
        if not self.get_option("host_key_checking"):
            args.extend(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        port = self.get_option("port")
        key = self.get_option("private_key_file")
        return {
            "host": self.get_option("host") or self._play_context.remote_addr,
            "port": int(port) if port else None,
            "user": self.get_option("remote_user"),
            "identity": os.path.expanduser(key) if key else None,
            "ssh_args": _without_mux(args),
            "ssh_executable": self.get_option("ssh_executable"),
            "timeout": int(self.get_option("timeout")),
            # Handed to ssh through SSH_ASKPASS by the controller, as the
            # ssh plugin's default password mechanism does.
            "password": self.get_option("password") or None,
        }

    def _connect(self):
        if self._client is None:
            self._client = _client.Client()
        self._connected = True
        return self

    def _call(self, request):
        request["target"] = self._target()
        try:
            return self._client.call(request)
        except _client.ControllerError as e:
            if e.unreachable:
                raise AnsibleConnectionFailure(str(e))
            if e.plain:
                raise AnsibleError(str(e))
            raise AnsibleError("spindle: %s" % e)

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
            return self._stock_ssh().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        module = _pipelined_module(cmd, in_data) if in_data else None
        if module is not None:
            python, env, parts = module
            parts["zip"] = _client.b64(parts["zip"])
            request = {"op": "module", "python": python, "env": env, "module": parts}
            request["retire_users"] = _accounts_changed(parts)
        else:
            request = {"op": "exec", "cmd": cmd, "stdin": _client.b64(in_data) if in_data else None}
        request["become"] = account
        reply = self._call(request)
        return reply["rc"], _client.unb64(reply["stdout"]), _client.unb64(reply["stderr"])

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        if not os.path.exists(in_path):
            raise AnsibleFileNotFound("file or module does not exist: %s" % in_path)
        self._call({"op": "put", "src": in_path, "dst": out_path})

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        self._call({"op": "fetch", "src": in_path, "dst": out_path})

    def reset(self):
        if self._client is not None:
            self._call({"op": "reset"})
        if self._stock is not None:
            self._stock.reset()

    def close(self):
        # The controller keeps the host's link for the rest of the run.
        self._connected = False
        if self._stock is not None:
            self._stock.close()


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


def _pipelined_module(cmd, in_data):
    """(python, env, split payload) when `cmd` is Ansible's pipelined module
    command (`/bin/sh -c '[VAR=value ...] PYTHON && sleep 0'`) and the data
    an AnsiballZ wrapper; None otherwise (then it runs as a plain command)."""
    try:
        outer = shlex.split(cmd)
        if len(outer) != 3 or outer[1] != "-c" or not outer[0].endswith("sh"):
            return None
        words = shlex.split(outer[2])
    except ValueError:
        return None
    if words[-3:] != ["&&", "sleep", "0"] or len(words) < 4:
        return None
    *assignments, python = words[:-3]
    env = {}
    for a in assignments:
        name, eq, value = a.partition("=")
        if not eq or not name.isidentifier():
            return None
        env[name] = value
    if not python.startswith("/"):
        return None
    try:
        return python, env, _payload.split(in_data)
    except _payload.NotAnsiballZ:
        return None
