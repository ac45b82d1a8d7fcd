# Spindle's `spindle_su` connection: `ansible_connection=spindle_su` runs a
# host's tasks on the controller's own machine as `ansible_user`, switched
# to through su once for the run. The connection itself lives in the
# spindle_ansible package.
import os
import sys

# The spindle_ansible package: in a checkout next to this directory, in an
# installation this directory's parent.
_here = os.path.dirname(os.path.abspath(__file__))
for _base in (os.path.dirname(_here), os.path.dirname(os.path.dirname(_here))):
    if os.path.isfile(os.path.join(_base, "spindle_ansible", "account.py")):
        if _base not in sys.path:
            sys.path.insert(0, _base)
        break

from spindle_ansible.account import connection_class, documentation  # noqa: E402

Connection = connection_class("su")

DOCUMENTATION = documentation("su", "spindle_su")
