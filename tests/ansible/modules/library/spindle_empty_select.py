#!/usr/bin/python
# Test module: the selectors run_command uses return at once when nothing is
# registered (a select() on an empty selector would otherwise sleep out its
# timeout, or for ever without one), and run_command's results are as ever.
import signal

from ansible.module_utils import basic
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={})

    def blocked(*_):
        module.fail_json(msg="select() on an empty selector blocked")

    signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)
    events = {}
    for name in ("PollSelector", "SelectSelector"):
        cls = getattr(basic.selectors, name, None)
        if cls is not None:
            selector = cls()
            events[name] = selector.select(None)
            selector.close()
    signal.alarm(0)
    rc, out, err = module.run_command(["sh", "-c", "echo out; echo err >&2; exit 3"])
    module.exit_json(changed=False, events=events, code=rc, out=out, err=err)


if __name__ == "__main__":
    main()
