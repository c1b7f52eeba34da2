#!/bin/sh
# Re-creates the whitepaper fixtures verbatim (trailing spaces included) from the seed
# text. The only edit: DRBD's wrapped `halt -` / `f";` lines are joined back into one.
# Usage: testdata/config/whitepaper/extract.sh /path/to/ox-ha-whitepaper.txt
set -eu
seed=${1:?usage: extract.sh ox-ha-whitepaper.txt}
here=$(dirname "$0")
# drbd.conf: from the line after "Example Configuration File for drbd" (and its blank
# line) to the closing brace before "Example Configuration Files for Heartbeat".
awk '/^Example Configuration File for drbd/ {on=1; skip=1; next}
     /Example Configuration Files for Heartbeat/ {on=0}
     on && skip && /^$/ {skip=0; next}
     on {print}' "$seed" | sed -e '/halt -$/{N;s/\n//}' > "$here/drbd.conf"
# ha.cf: the lines after "/etc/ha.d/ha.cf (on master):" up to the first empty line.
awk '/^\/etc\/ha.d\/ha.cf/ {on=1; next} on && /^$/ {exit} on {print}' "$seed" > "$here/ha.cf"
# haresources: the lines after its heading up to the first empty line.
awk '/^\/etc\/ha.d\/haresources/ {on=1; next} on && /^$/ {exit} on {print}' "$seed" > "$here/haresources"
