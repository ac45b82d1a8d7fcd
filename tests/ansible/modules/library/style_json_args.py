#!/usr/bin/python
# Module style JSON_ARGS: Ansible pastes the arguments into the source.
import json
import sys

args = json.loads("""<<INCLUDE_ANSIBLE_MODULE_JSON_ARGS>>""")
print(json.dumps({"changed": False, "style": "json_args", "echo": args.get("msg")}))
sys.exit(0)
