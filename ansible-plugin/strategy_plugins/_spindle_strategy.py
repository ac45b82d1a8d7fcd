# Shared by Spindle's strategy plugins: while one of them runs, hosts that
# would use Ansible's ssh or local connection use Spindle's instead. Every other
# connection type (winrm, network_cli, paramiko, community plugins) is left
# alone, in the same play.
#
# Ansible forks its workers from the process running the strategy, so
# redirecting the connection loader here reaches every worker.
import functools

from ansible.plugins import loader

_REDIRECT = {
    "ssh": "spindle",
    "ansible.builtin.ssh": "spindle",
    "local": "spindle_local",
    "ansible.builtin.local": "spindle_local",
}


def install():
    connections = loader.connection_loader
    for method in ("get", "get_with_context"):
        original = getattr(connections, method)
        if getattr(original, "_spindle", False):
            continue

        def redirected(name, *args, _original=original, **kwargs):
            return _original(_REDIRECT.get(name, name), *args, **kwargs)

        functools.update_wrapper(redirected, original)
        redirected._spindle = True
        setattr(connections, method, redirected)


def wrap(base):
    """A strategy class that behaves as `base` with the redirect in place."""

    class StrategyModule(base):
        def __init__(self, *args, **kwargs):
            install()
            super().__init__(*args, **kwargs)

    return StrategyModule
