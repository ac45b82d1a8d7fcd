#!/usr/bin/python
# Test module: the selectors run_command uses return at once the first time
# they select with nothing registered (a select() on an empty selector would
# otherwise sleep out its timeout, or for ever without one), later such
# selects still sleep, and run_command's results are as ever.
import signal
import time

from ansible.module_utils import basic
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={})

    def blocked(*_):
        module.fail_json(msg="select() on an empty selector blocked")

    signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)
    events, slept = {}, {}
    for name in ("PollSelector", "SelectSelector"):
        cls = getattr(basic.selectors, name, None)
        if cls is not None:
            selector = cls()
            events[name] = selector.select(None)
            started = time.monotonic()
            selector.select(0.3)
            slept[name] = time.monotonic() - started >= 0.25
            selector.close()
    signal.alarm(0)
    rc, out, err = module.run_command(["sh", "-c", "echo out; echo err >&2; exit 3"])
    module.exit_json(changed=False, events=events, slept=slept, code=rc, out=out, err=err)


if __name__ == "__main__":
    main()
