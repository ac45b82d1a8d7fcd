#!/bin/sh
# Old-style module: argv[1] is a file of key=value pairs.
. "$1"
printf '{"changed": false, "style": "old", "echo": "%s"}\n' "$msg"
