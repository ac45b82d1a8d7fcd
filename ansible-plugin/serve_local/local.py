# Spindle serving `local`: with this directory among `connection_plugins`,
# every host whose connection is `local` (`hosts: localhost`,
# `delegate_to: localhost`) goes through Spindle, whatever the strategy: the
# same connection as `ansible_connection=spindle_local`.
import os
import sys

# The spindle_ansible package: in a checkout next to this directory, in an
# installation this directory's parent.
_here = os.path.dirname(os.path.abspath(__file__))
for _base in (os.path.dirname(_here), os.path.dirname(os.path.dirname(_here))):
    if os.path.isfile(os.path.join(_base, "spindle_ansible", "local.py")):
        if _base not in sys.path:
            sys.path.insert(0, _base)
        break

from spindle_ansible.local import LocalConnection as Connection, documentation  # noqa: E402,F401

DOCUMENTATION = documentation("local")
