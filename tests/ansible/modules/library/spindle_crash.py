#!/usr/bin/python
# Test module: writes a line to its stderr and dies without a result.
import os
import sys

from ansible.module_utils.basic import AnsibleModule


def main():
    AnsibleModule(argument_spec={})
    sys.stderr.write("spindle-test-crash\n")
    sys.stderr.flush()
    os._exit(3)


if __name__ == "__main__":
    main()
