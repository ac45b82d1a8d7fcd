# Spindle serving `ssh`: with this directory among `connection_plugins`,
# every host whose connection is `ssh` (the default) goes through Spindle,
# whatever the strategy: the same connection as `ansible_connection=spindle`.
import os
import sys

# The spindle_ansible package: in a checkout next to this directory, in an
# installation this directory's parent.
_here = os.path.dirname(os.path.abspath(__file__))
for _base in (os.path.dirname(_here), os.path.dirname(os.path.dirname(_here))):
    if os.path.isfile(os.path.join(_base, "spindle_ansible", "connection.py")):
        if _base not in sys.path:
            sys.path.insert(0, _base)
        break

from spindle_ansible.connection import Connection, documentation  # noqa: E402,F401

DOCUMENTATION = documentation("ssh")
