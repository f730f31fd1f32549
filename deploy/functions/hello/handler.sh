#!/bin/sh
# One HTTP request on stdin, the answer on stdout: greets the body (or the MQTT topic the agent
# names in the fleet-topic header).
read -r method path proto
len=0
topic=
while read -r line; do
  line=$(printf '%s' "$line" | busybox tr -d '\r')
  [ -z "$line" ] && break
  case "$line" in
    [Cc]ontent-[Ll]ength:*) len=${line#*: } ;;
    [Ff]leet-[Tt]opic:*) topic=${line#*: } ;;
  esac
done
body=$(busybox head -c "$len")
resp="hello from $FLEET_FUNCTION: $method $path${topic:+ on $topic} ${body:-(no body)}"
printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s\n' \
  "$(( ${#resp} + 1 ))" "$resp"
