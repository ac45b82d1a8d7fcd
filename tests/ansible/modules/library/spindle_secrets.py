#!/usr/bin/python
# Test module: reports whether the module's own masking knows the run's
# secrets (ansible-core 2.22 on hands them to modules through the wrapper;
# earlier releases have no `ansible.module_utils.secrets`).
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={"text": {"type": "str", "required": True}})
    try:
        from ansible.module_utils.secrets import mask_secrets
    except ImportError:
        module.exit_json(changed=False, supported=False)
    text = module.params["text"]
    module.exit_json(changed=False, supported=True, masked=mask_secrets(text) != text)


main()
