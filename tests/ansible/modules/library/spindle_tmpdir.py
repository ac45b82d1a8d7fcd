#!/usr/bin/python
# Test module: reports where AnsibleModule puts its temporary files.
import os

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    tmpdir = module.tmpdir
    remote_tmp = os.path.expanduser(os.path.expandvars(module._remote_tmp))
    module.exit_json(
        changed=False,
        tmpdir=tmpdir,
        existed=os.path.isdir(tmpdir),
        remote_tmp=remote_tmp.rstrip("/"),
    )


if __name__ == "__main__":
    main()
