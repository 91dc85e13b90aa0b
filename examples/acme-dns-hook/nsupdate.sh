#!/bin/sh
# An `acme.dns01.hook` for DNS servers that take RFC 2136 dynamic updates (BIND, Knot,
# PowerDNS, many providers): publishes or removes the DNS-01 TXT record with `nsupdate`, signed
# with a TSIG key, and on `set` returns once the server answers with it.
#
#   nsupdate.sh set <record> <value>      nsupdate.sh clear <record> <value>
#
# Settings come from the proxy's environment (e.g. `Environment=` in its systemd unit):
#   SANDGATE_DNS_SERVER  the primary server taking updates for the zone (name or address)
#   SANDGATE_DNS_PORT    its port (53)
#   SANDGATE_DNS_KEY     a TSIG key file allowed to update the zone (`tsig-keygen -a hmac-sha256 sandgate`)
#   SANDGATE_DNS_WAIT    seconds `set` waits for the server to answer with the record (30;
#                        keep it below acme.dns01.hook_timeout, so this script's error is seen)
# Needs `nsupdate` and `dig` (Debian: bind9-dnsutils). Tested by tests/custom_domains.rs
# against BIND. Secondaries follow the primary by NOTIFY: acme.dns01.propagation_wait adds time
# for them if the CA may ask one that lags.
set -eu
action=${1:?usage: nsupdate.sh set|clear <record> <value>}
record=${2:?no record}
value=${3:?no value}
server=${SANDGATE_DNS_SERVER:?SANDGATE_DNS_SERVER is not set}
port=${SANDGATE_DNS_PORT:-53}
key=${SANDGATE_DNS_KEY:?SANDGATE_DNS_KEY is not set}

case $action in
  set) change="update add $record. 60 IN TXT \"$value\"" ;;
  clear) change="update delete $record. IN TXT \"$value\"" ;;
  *) echo "unknown action $action (set or clear)" >&2; exit 2 ;;
esac
printf 'server %s %s\n%s\nsend\n' "$server" "$port" "$change" | nsupdate -t 10 -k "$key"
[ "$action" = set ] || exit 0

limit=${SANDGATE_DNS_WAIT:-30}
tries=$limit
while [ "$tries" -gt 0 ]; do
  if dig +short +time=2 +tries=1 -p "$port" TXT "$record" "@$server" | grep -qF "\"$value\""; then
    exit 0
  fi
  sleep 1
  tries=$((tries - 1))
done
echo "$server does not answer $record TXT after $limit s" >&2
exit 1
