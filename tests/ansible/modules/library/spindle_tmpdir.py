#!/usr/bin/python
# Test module: reports where AnsibleModule puts its temporary files, and
# leaves files there when asked (`leave: true`).
import os

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={"leave": {"type": "bool", "default": False}}, supports_check_mode=True)
    tmpdir = module.tmpdir
    if module.params["leave"]:
        os.makedirs(os.path.join(tmpdir, "sub"))
        for name in ["left", "sub/left"] + ["sub/%d" % i for i in range(500)]:
            with open(os.path.join(tmpdir, name), "w") as f:
                f.write("left behind\n")
    remote_tmp = os.path.expanduser(os.path.expandvars(module._remote_tmp))
    module.exit_json(
        changed=False,
        tmpdir=tmpdir,
        existed=os.path.isdir(tmpdir),
        remote_tmp=remote_tmp.rstrip("/"),
    )


if __name__ == "__main__":
    main()
