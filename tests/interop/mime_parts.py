#!/usr/bin/env python3
"""Prints a message's decoded structure as JSON, read with Python's email
package (an independent MIME reader): Subject and From decoded, and each
leaf part's type, transfer encoding and decoded octets (hex). Also reports
the longest line and whether any octet is 8-bit.
Usage: mime_parts.py FILE"""
import email
import json
import sys
from email import policy

raw = open(sys.argv[1], "rb").read()
m = email.message_from_bytes(raw, policy=policy.default)
parts = []
for p in m.walk():
    if p.is_multipart():
        continue
    parts.append({
        "type": p.get_content_type(),
        "cte": str(p.get("content-transfer-encoding", "")),
        "hex": (p.get_payload(decode=True) or b"").hex(),
        "filename": p.get_filename(),
        "subject": str(p["subject"]) if p["subject"] is not None else None,
    })
print(json.dumps({
    "subject": str(m["subject"]),
    "from": str(m["from"]),
    "parts": parts,
    "longest_line": max((len(l.rstrip(b"\r")) for l in raw.split(b"\n")), default=0),
    "eight_bit": any(b >= 0x80 for b in raw),
}))
