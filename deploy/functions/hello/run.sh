#!/bin/sh
# A sample function (docs/FUNCTIONS.md, "http" mode): serve HTTP on the port the agent assigns,
# one request per connection, answered by handler.sh. busybox is all it needs.
exec busybox nc -ll -p "$FLEET_FUNCTION_PORT" -e "$PWD/handler.sh"
