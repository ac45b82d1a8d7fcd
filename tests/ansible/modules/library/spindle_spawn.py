#!/usr/bin/python
# Test module: how commands start from a module. run_command applies the
# umask it is given (and only then); a command's ignored and blocked signals
# are those of a forked start, whichever way it is started (relative or
# absolute executable, descriptors closed or not, through a shell); a
# preexec_fn of the module's own runs in the command's process, and fork
# hooks it registers (through os or posix) run around a start. Where
# Spindle's interpreter counts the starts it left an idle preexec_fn out of,
# the count for each.
import os
import posix
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


def dropped():
    # subprocess starts commands with this (bound to a name of its own from
    # Python 3.11 on).
    start = getattr(subprocess, "_fork_exec", None) or _posixsubprocess.fork_exec
    return getattr(start, "dropped", None)


def counted(run):
    before = dropped()
    result = run()
    after = dropped()
    return result, None if before is None else after - before


def main():
    module = AnsibleModule(argument_spec={})
    mine = os.umask(0o022)
    os.umask(mine)
    as_forked, left_out = {}, {}
    for start, (args, options) in STARTS.items():
        (rc, out, _), left_out[start] = counted(lambda: module.run_command(args, binary_data=True, encoding=None, **options))
        as_forked[start] = rc == 0 and signals(out) == signals(forked(args, options))
    (_, plain, _), left_out["plain"] = counted(lambda: module.run_command(["sh", "-c", "umask"]))
    (_, masked, _), left_out["masked"] = counted(lambda: module.run_command(["sh", "-c", "umask"], umask=0o027))
    own = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid() == os.getpgrp())"],
        preexec_fn=os.setpgrp,
        stdout=subprocess.PIPE,
        check=True,
    ).stdout
    # Fork hooks the module registers run around its commands' starts.
    fired = []
    posix.register_at_fork(before=lambda: fired.append("posix"))
    os.register_at_fork(before=lambda: fired.append("before"), after_in_parent=lambda: fired.append("parent"))
    _, left_out["after_hooks"] = counted(lambda: module.run_command(["true"]))
    module.exit_json(
        changed=False,
        python="%d.%d" % sys.version_info[:2],
        module_umask="%04o" % mine,
        plain=plain.strip(),
        masked=masked.strip(),
        own_preexec_ran=own.strip() == b"True",
        fork_hooks_ran=sorted(fired) == ["before", "parent", "posix"],
        as_forked=as_forked,
        left_out=left_out,
    )


if __name__ == "__main__":
    main()
