#!/usr/bin/python
# Module style WANT_JSON: the arguments arrive as a JSON file in argv[1].
import json
import sys

with open(sys.argv[1]) as f:
    args = json.load(f)
print(json.dumps({"changed": False, "style": "want_json", "echo": args.get("msg")}))
