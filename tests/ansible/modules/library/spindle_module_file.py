#!/usr/bin/python
# Test module: when Ansible runs it from a file (no pipelining), checks that
# file in the task's temp dir: the zip it carries (its longest run of base64)
# is whole and holds this module.
import base64
import glob
import io
import os
import re
import zipfile

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={})
    found = glob.glob(os.path.join(module.tmpdir, "AnsiballZ_spindle_module_file.py"))
    if len(found) != 1:
        module.fail_json(msg="no module file in %s" % module.tmpdir, found=found)
    with open(found[0], "rb") as f:
        content = f.read()
    runs = re.findall(rb"[A-Za-z0-9+/=]{1000,}", content)
    if not runs:
        module.fail_json(msg="no base64 in the module file")
    data = base64.b64decode(max(runs, key=len), validate=True)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        bad = z.testzip()
        names = [n for n in z.namelist() if n.endswith("/spindle_module_file.py")]
    module.exit_json(file_size=len(content), zip_bad_member=bad, zip_has_module=bool(names))


if __name__ == "__main__":
    main()
