"""dkimpy helper for benches/compare.py (AUTH=...): run with Debian's
/usr/bin/python3 (package python3-dkim), not a pyenv python without it.
DNS answers come from a JSON file of {"name": "TXT text"}, never from a
resolver.

  bench_dkim.py sign MESSAGE KEYPEM SELECTOR DOMAIN OUT
      sign MESSAGE (CRLF) with petrel's key (RSA, or Ed25519 in PKCS#8),
      relaxed/relaxed, and write it to OUT with LF line ends, as
      `smtp-source -F` wants (it sends each line followed by CRLF).
  bench_dkim.py check MESSAGE RECORDS
      print dkimpy's verdict on every DKIM signature and on the ARC chain
      of MESSAGE (as captured by `smtp-sink -d`: LF line ends, the sink's
      X-* and Received lines first).
"""
import base64
import json
import sys

import dkim


def dnsfunc_from(path):
    records = json.load(open(path))

    def dnsfunc(name, timeout=5):
        n = name.decode() if isinstance(name, bytes) else name
        text = records.get(n.rstrip(".").lower())
        return text.encode() if text else b""

    return dnsfunc


def dkimpy_key(pem):
    """(key, algorithm) in the form dkimpy takes."""
    if b"BEGIN PRIVATE KEY" in pem:
        der = base64.b64decode(b"".join(l for l in pem.splitlines() if not l.startswith(b"-----")))
        if der[5:12] == b"\x30\x05\x06\x03\x2b\x65\x70" and der[12:16] == b"\x04\x22\x04\x20":
            # Ed25519 (RFC 8410, OID 1.3.101.112): the 32-octet seed after a
            # 16-octet prefix (a public key may follow, RFC 5958 v2);
            # dkimpy takes its base64.
            return base64.b64encode(der[16:48]), b"ed25519-sha256"
    return pem, b"rsa-sha256"


def main():
    mode = sys.argv[1]
    if mode == "sign":
        message = open(sys.argv[2], "rb").read()
        key, algorithm = dkimpy_key(open(sys.argv[3], "rb").read())
        sig = dkim.sign(
            message,
            sys.argv[4].encode(),
            sys.argv[5].encode(),
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=algorithm,
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id",
                             b"mime-version", b"content-type"],
        )
        with open(sys.argv[6], "wb") as f:
            f.write((sig + message).replace(b"\r\n", b"\n"))
    elif mode == "check":
        raw = open(sys.argv[2], "rb").read().replace(b"\r\n", b"\n")
        # smtp-sink's dump: envelope lines (X-Client-Addr ...) and its own
        # Received header come first; drop the envelope lines.
        lines = raw.split(b"\n")
        while lines and lines[0].startswith(b"X-") and not lines[0].lower().startswith(b"x-petrel"):
            lines.pop(0)
        message = b"\r\n".join(lines)
        dnsfunc = dnsfunc_from(sys.argv[3])
        d = dkim.DKIM(message)
        n = sum(1 for h in d.headers if h[0].lower() == b"dkim-signature")
        for i in range(n):
            try:
                ok = d.verify(idx=i, dnsfunc=dnsfunc)
            except dkim.DKIMException as e:
                ok = f"error {e}"
            print(f"dkimpy: DKIM-Signature {i}: {'pass' if ok is True else 'fail ' + str(ok)}")
        cv, _results, reason = dkim.arc_verify(message, dnsfunc=dnsfunc)
        print(f"dkimpy: arc={cv.decode()} ({reason})")
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
