#!/usr/bin/python
# Test module: how commands start from a module. run_command applies the
# umask it is given (and only then); a command's ignored and blocked signals
# are those of a forked start, whichever way it is started (relative or
# absolute executable, descriptors closed or not, through a shell); a
# preexec_fn of the module's own runs in the command's process, and fork
# hooks it registers run around a start; and, as
# seen by _posixsubprocess, whether each start carried a preexec_fn.
import os
import subprocess
import sys

import _posixsubprocess

from ansible.module_utils.basic import AnsibleModule

STARTS = {
    "relative": (["cat", "/proc/self/status"], {}),
    "absolute_fds_open": (["/bin/cat", "/proc/self/status"], {"close_fds": False}),
    "shell": ("cat /proc/self/status", {"use_unsafe_shell": True}),
}


def signals(status):
    return [line for line in status.splitlines() if line.startswith((b"SigIgn", b"SigBlk"))]


def forked(args, options):
    # The same start with a preexec_fn of our own, which makes it a fork.
    return subprocess.run(
        args,
        shell=options.get("use_unsafe_shell", False),
        close_fds=options.get("close_fds", True),
        preexec_fn=lambda: None,
        stdout=subprocess.PIPE,
        check=True,
    ).stdout


def main():
    module = AnsibleModule(argument_spec={})
    carried = []
    # subprocess calls it by a name of its own from Python 3.11 on.
    owner, name = (subprocess, "_fork_exec") if getattr(subprocess, "_fork_exec", None) else (_posixsubprocess, "fork_exec")
    fork_exec = getattr(owner, name)

    def noting(*args):
        carried.append(any(callable(a) for a in args))
        return fork_exec(*args)

    mine = os.umask(0o022)
    os.umask(mine)
    as_forked, preexec = {}, {}
    for start, (args, options) in STARTS.items():
        del carried[:]
        setattr(owner, name, noting)
        rc, out, _ = module.run_command(args, binary_data=True, encoding=None, **options)
        setattr(owner, name, fork_exec)
        as_forked[start] = rc == 0 and signals(out) == signals(forked(args, options))
        preexec[start] = carried[0] if carried else None
    del carried[:]
    setattr(owner, name, noting)
    _, plain, _ = module.run_command(["sh", "-c", "umask"])
    _, masked, _ = module.run_command(["sh", "-c", "umask"], umask=0o027)
    own = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid() == os.getpgrp())"],
        preexec_fn=os.setpgrp,
        stdout=subprocess.PIPE,
        check=True,
    ).stdout
    setattr(owner, name, fork_exec)
    # Fork hooks the module registers run around its commands' starts.
    fired = []
    os.register_at_fork(before=lambda: fired.append("before"), after_in_parent=lambda: fired.append("parent"))
    module.run_command(["true"])
    module.exit_json(
        fork_hooks_ran=fired == ["before", "parent"],
        changed=False,
        python="%d.%d" % sys.version_info[:2],
        module_umask="%04o" % mine,
        plain=plain.strip(),
        masked=masked.strip(),
        own_preexec_ran=own.strip() == b"True",
        as_forked=as_forked,
        preexec=preexec,
        carried=carried,
    )


if __name__ == "__main__":
    main()
