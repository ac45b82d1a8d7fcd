# A test tool: Ansible's own ssh connection, which also records every
# pipelined module payload it sends together with the raw result the target
# returned (rc, stdout, stderr). Spindle's tests replay the recorded
# payloads through Spindle and compare with these stock results.
#
# Records go to $SPINDLE_RECORD_DIR as NNN.payload and NNN.json.
import base64
import json
import os

from ansible.plugins.connection import ssh

DOCUMENTATION = ssh.DOCUMENTATION.replace("name: ssh", "name: spindle_record", 1)


class Connection(ssh.Connection):
    transport = "spindle_record"

    def exec_command(self, cmd, in_data=None, sudoable=True):
        rc, out, err = super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        where = os.environ.get("SPINDLE_RECORD_DIR")
        if where and in_data and b"_ansiballz_main" in in_data:
            n = len([f for f in os.listdir(where) if f.endswith(".payload")])
            base = os.path.join(where, "%03d" % n)
            with open(base + ".payload", "wb") as f:
                f.write(in_data)
            with open(base + ".json", "w") as f:
                json.dump(
                    {
                        "rc": rc,
                        "stdout": base64.b64encode(out).decode(),
                        "stderr": base64.b64encode(err).decode(),
                    },
                    f,
                )
        return rc, out, err
