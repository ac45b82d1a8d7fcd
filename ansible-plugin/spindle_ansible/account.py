"""Account switches as connection types: `spindle_sudo`, `spindle_su` and
`spindle_doas` run a host's tasks on the controller's own machine as
another account (`ansible_user`), reached through sudo, su or doas once
for the run: a child of the local agent under that account, as `become`
makes on a target. Commands, modules and file transfers all run as that
account; `echo ~` is its home.

A task's own `become` on top of such a connection is refused unless it
names the same account: the account switch is the connection's.
"""
import shlex

from ansible.errors import AnsibleError

from spindle_ansible.local import LocalConnection

_DOCUMENTATION = """
    name: {name}
    short_description: run tasks on the controller as another account, through {method}
    description:
        - Runs each task on the controller's own machine as the account named by C(ansible_user),
          switched to once per run through {method} by Spindle's local agent.
    author: Spindle
    options:
        remote_user:
            description: The account tasks run as.
            default: root
            vars:
                - name: ansible_user
                - name: ansible_{method}_user
        password:
            description: The password {method} asks for, if it asks.
            vars:
                - name: ansible_password
                - name: ansible_{method}_pass
        exe:
            description: The {method} program.
            default: {method}
            vars:
                - name: ansible_{method}_exe
        flags:
            description: Options given to {method}.
            default: "{flags}"
            vars:
                - name: ansible_{method}_flags
    extends_documentation_fragment:
        - connection_pipelining
"""

# Options given to the program unless the inventory says otherwise: sudo's
# as Ansible's sudo become plugin gives them.
_FLAGS = {"sudo": "-H -S -n", "su": "", "doas": ""}


def documentation(method, name):
    """DOCUMENTATION for the plugin file exposing `method` as `name`."""
    return _DOCUMENTATION.format(name=name, method=method, flags=_FLAGS[method])


class AccountConnection(LocalConnection):
    _method = None

    def _login_user(self):
        return self.get_option("remote_user") or "root"

    def _connect(self):
        super()._connect()
        # The account every step runs as: what Ansible expands `~` for and
        # compares become users with.
        self._play_context.remote_user = self._login_user()
        return self

    def _account(self):
        prompts = []
        if self._method == "su":
            from ansible.plugins.become.su import BecomeModule

            prompts = list(BecomeModule.SU_PROMPT_LOCALIZATIONS)
        return {
            "method": self._method,
            "prompts": prompts,
            "exe": self.get_option("exe") or self._method,
            "flags": shlex.split(self.get_option("flags") or ""),
            "user": self._login_user(),
            "password": self.get_option("password") or None,
        }

    def _call(self, request):
        account = self._account()
        wanted = request.get("become")
        if wanted is not None and wanted["user"] != account["user"]:
            raise AnsibleError(
                "%s: become_user %s on a connection that is already account %s is not supported; "
                "name the account in ansible_user instead" % (self._load_name, wanted["user"], account["user"])
            )
        request["become"] = account
        return super()._call(request)

    def _home(self, user):
        return super()._home(user or self._login_user())

    def _stock_connection(self):
        raise AnsibleError(
            "%s: this become method cannot run on top of an account connection; "
            "name the account in ansible_user instead" % self._load_name
        )


def connection_class(method):
    """The connection plugin class for `method` (sudo, su or doas), named
    `Connection` as Ansible files a plugin's settings under its class
    name."""

    class Connection(AccountConnection):
        transport = "spindle_" + method
        _method = method
        _kind = method.upper() + " CONNECTION"

    return Connection
