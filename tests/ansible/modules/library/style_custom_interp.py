#!/usr/bin/spindletestpy
# WANT_JSON
# Its interpreter line is rewritten from ansible_spindletestpy_interpreter.
import json
import sys

with open(sys.argv[1]) as f:
    args = json.load(f)
print(json.dumps({"changed": False, "style": "custom", "echo": args.get("msg"), "exe": sys.executable}))
