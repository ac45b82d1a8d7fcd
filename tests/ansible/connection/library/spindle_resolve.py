#!/usr/bin/python
# Test module: the IPv4 addresses a name resolves to, through the C
# library's resolver as any module would use it.
import socket

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={"name": {"type": "str", "required": True}})
    name = module.params["name"]
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as e:
        module.exit_json(changed=False, addresses=[], error=str(e))
    module.exit_json(changed=False, addresses=sorted({info[4][0] for info in infos}))


if __name__ == "__main__":
    main()
