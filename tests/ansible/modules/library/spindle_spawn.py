#!/usr/bin/python
# Test module: how commands start from a module. run_command applies the
# umask it is given (and only then); a preexec_fn of the module's own runs in
# the command's process; and, as seen by _posixsubprocess, whether each
# start carried a preexec_fn at all.
import os
import subprocess
import sys

import _posixsubprocess

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={})
    carried = []
    # subprocess calls it by a name of its own from Python 3.11 on.
    owner, name = (subprocess, "_fork_exec") if getattr(subprocess, "_fork_exec", None) else (_posixsubprocess, "fork_exec")
    fork_exec = getattr(owner, name)

    def noting(*args):
        carried.append(any(callable(a) for a in args))
        return fork_exec(*args)

    setattr(owner, name, noting)
    mine = os.umask(0o022)
    os.umask(mine)
    _, plain, _ = module.run_command(["sh", "-c", "umask"])
    _, masked, _ = module.run_command(["sh", "-c", "umask"], umask=0o027)
    own = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid() == os.getpgrp())"],
        preexec_fn=os.setpgrp,
        stdout=subprocess.PIPE,
        check=True,
    ).stdout
    setattr(owner, name, fork_exec)
    module.exit_json(
        changed=False,
        module_umask="%04o" % mine,
        plain=plain.strip(),
        masked=masked.strip(),
        own_preexec_ran=own.strip() == b"True",
        carried=carried,
    )


if __name__ == "__main__":
    main()
