#!/bin/bash
# WANT_JSON
# A bash module that wants JSON arguments.
read -r -d '' args < "$1"
case "$args" in *'"msg": "hi"'*) echo '{"changed": false, "style": "bash", "echo": "hi"}' ;; *) echo '{"failed": true, "msg": "no args"}' ;; esac
