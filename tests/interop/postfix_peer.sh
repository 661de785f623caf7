#!/usr/bin/env bash
# Runs a private Postfix instance as a test peer: loopback only, DNS
# look-ups off, mail for postfix.test delivered to maildir DIR/mail/box/,
# reject@postfix.test refused with 550. Runs in the foreground until killed.
# Usage: postfix_peer.sh DIR PORT   (as root; DIR must not exist yet;
# $POSTFIX_PEER_EXTRA: more main.cf lines)
set -euo pipefail
DIR=$1
PORT=$2
mkdir -p "$DIR/etc" "$DIR/queue" "$DIR/data" "$DIR/mail"
chmod 755 "$DIR"
chown postfix "$DIR/mail" "$DIR/data"
cat > "$DIR/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $DIR/queue
data_directory = $DIR/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-peer.test
mydomain = postfix-peer.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_recipient_restrictions = check_recipient_access inline:{ { reject@postfix.test = 550 5.1.1 no such user here } }, permit_mynetworks, reject
virtual_mailbox_domains = postfix.test
virtual_mailbox_base = $DIR/mail
virtual_mailbox_maps = static:box/
virtual_uid_maps = static:$(id -u postfix)
virtual_gid_maps = static:$(id -g postfix)
smtputf8_enable = yes
maillog_file = /dev/stdout
CF
cat > "$DIR/etc/master.cf" <<CF
127.0.0.1:$PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
CF
# Extra main.cf lines for a test, e.g. "smtpd_discard_ehlo_keywords = 8bitmime".
if [ -n "${POSTFIX_PEER_EXTRA:-}" ]; then
    printf '%s\n' "$POSTFIX_PEER_EXTRA" >> "$DIR/etc/main.cf"
fi
exec postfix -c "$DIR/etc" start-fg
