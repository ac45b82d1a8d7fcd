#!/bin/sh
# Run by the `script` action in connection/basic.yml.
echo "script out $1"
echo "script err" >&2
exit 2
