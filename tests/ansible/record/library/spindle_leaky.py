#!/usr/bin/python
# A misbehaving module for Spindle's isolation tests: it reports what it
# finds left over from earlier runs in the same interpreter, then leaves
# state behind on purpose (patched os, a module global, an environment
# variable, an open descriptor, an atexit handler, an imported module).
import atexit
import os
import sys

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(marker=dict(type="str", default="x")))
    found = {
        "patched_getcwd": getattr(os.getcwd, "_spindle_leak", False),
        "env": os.environ.get("SPINDLE_LEAK"),
        "global": getattr(sys, "_spindle_leak", None),
        "imported_leak_module": "spindle_leak_marker" in sys.modules,
        "open_fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    }
    def patched():
        return "/patched"
    patched._spindle_leak = True
    os.getcwd = patched
    os.environ["SPINDLE_LEAK"] = module.params["marker"]
    sys._spindle_leak = module.params["marker"]
    sys.modules["spindle_leak_marker"] = sys
    os.open("/dev/null", os.O_RDONLY)
    path = "/tmp/spindle-atexit-%s" % module.params["marker"]
    atexit.register(lambda: open(path, "a").write("ran\n"))
    module.exit_json(changed=False, found=found)


if __name__ == "__main__":
    main()
