# Spindle's local connection plugin: `ansible_connection=spindle_local`
# runs a host's tasks on the controller's own machine as Ansible's `local`
# connection does, through a Spindle agent there. The connection itself
# lives in the spindle_ansible package.
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

DOCUMENTATION = documentation("spindle_local")
