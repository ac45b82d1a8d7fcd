"""Spindle serving Ansible's `local` connection: tasks for the controller's
own machine (`hosts: localhost`, `delegate_to: localhost`,
`ansible_connection=local`) run in an agent the run's controller starts
there without ssh, shared by every such host, with its warm interpreters.

Commands run as Ansible's local connection runs them: as the run's user,
with the run's environment (no login is emulated), through Ansible's
configured executable, in the directory Ansible names for each command (the
playbook's). Its options are the local plugin's.
"""
import getpass
import os

import ansible.constants as C
from ansible.errors import AnsibleError
from ansible.utils.display import Display
from ansible.utils.path import unfrackpath

from spindle_ansible import connection as _connection
from spindle_ansible.connection import load_builtin

display = Display()

_BUILTIN_LOCAL = load_builtin("local")


def documentation(name):
    """DOCUMENTATION for a plugin file exposing this connection as `name`."""
    return _BUILTIN_LOCAL.DOCUMENTATION.replace("name: local", "name: %s" % name, 1)


# Named `Connection` as every connection plugin class is: Ansible files a
# plugin's settings under its class name.
class Connection(_connection.Connection):
    # Ansible's action plugins compare this: with "local" they set `cwd`
    # before each command and refuse to reboot the controller.
    transport = "local"
    _stock_module = _BUILTIN_LOCAL
    _stock_name = "local"
    _kind = "LOCAL CONNECTION"
    _exit_255_unreachable = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cwd = None
        try:
            self.default_user = getpass.getuser()
        except KeyError:
            self.default_user = ""

    def _login_user(self):
        return self.default_user

    def _connect(self):
        # As the local plugin: the remote user is whoever runs Ansible.
        self._play_context.remote_user = self.default_user
        return super()._connect()

    def _host(self):
        return self._play_context.remote_addr

    def _target(self):
        return {"local": True, "timeout": self._become_timeout()}

    def _become_timeout(self):
        """Seconds an account switch may take: the local plugin's
        `become_success_timeout` (ansible-core 2.19 on), else the play's
        `timeout`."""
        try:
            timeout = int(self.get_option("become_success_timeout"))
        except (KeyError, AnsibleError, TypeError, ValueError):
            timeout = 0
        return timeout if timeout >= 1 else int(self._play_context.timeout or 10)

    def _where(self):
        executable = C.DEFAULT_EXECUTABLE.split()[0] if C.DEFAULT_EXECUTABLE else "/bin/sh"
        if not os.path.exists(executable):
            raise AnsibleError(
                "failed to find the executable specified %s. Please verify if the executable exists and re-try." % executable
            )
        where = {"shell": executable}
        if self.cwd is not None:
            where["cwd"] = os.fsdecode(self.cwd)
        return where

    def exec_command(self, cmd, in_data=None, sudoable=True):
        try:
            return super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        except AnsibleError as e:
            if not self._sudo_may_know_the_terminal(e):
                raise
        # sudo wants a password and none was given. Before ansible-core
        # 2.19 the local plugin runs sudo on the run's terminal (workers
        # stay in the run's session), where an earlier `sudo -v` may have
        # left a ticket that Spindle's agent (on no terminal) cannot use.
        # Ansible's own local connection runs this command: it succeeds
        # where a stock run would, and fails as one would (2.19 on detach
        # their workers from the terminal).
        display.vvv("SPINDLE: sudo wants a password: Ansible's local connection runs the command", host=self._host())
        return self._stock_connection().exec_command(cmd, in_data=in_data, sudoable=sudoable)

    def _sudo_may_know_the_terminal(self, error):
        plugin = self.become
        if plugin is None or _connection._SERVED_BECOME.get(plugin.name) != "sudo":
            return False
        try:
            password = plugin.get_option("become_pass")
        except (KeyError, AnsibleError):
            password = None
        return not password and str(error).startswith("Missing sudo password")

    def _use_tty(self):
        # The local plugin runs commands on pipes.
        return False

    def _home(self, user):
        # The shell's own answer: $HOME for `~`, the account database for
        # `~USER`; a name it cannot expand is left to the shell.
        home = os.path.expanduser("~" + user)
        if home.startswith("/"):
            return home, "from the controller's environment"
        return None

    def put_file(self, in_path, out_path):
        # Relative paths are the command directory's, and the destination's
        # links are followed, as the local plugin's copy does.
        asked = out_path
        in_path = unfrackpath(in_path, basedir=self.cwd)
        out_path = unfrackpath(out_path, basedir=self.cwd)
        if os.path.exists(in_path) and os.path.exists(out_path) and os.path.samefile(in_path, out_path):
            raise AnsibleError("failed to copy: %s and %s are the same" % (in_path, out_path))
        super().put_file(in_path, out_path)
        # A module file is run by the path Ansible named, not the resolved one.
        if out_path in self._module_files and asked != out_path:
            self._module_files = {asked: self._module_files[out_path]}

    def fetch_file(self, in_path, out_path):
        in_path = unfrackpath(in_path, basedir=self.cwd)
        out_path = unfrackpath(out_path, basedir=self.cwd)
        super().fetch_file(in_path, out_path)

    def reset(self):
        # Nothing to reset for the local plugin either: the agent stays.
        if self._stock is not None:
            self._stock.reset()


LocalConnection = Connection
