"""dkimpy (an implementation independent of petrel's mail-auth) for
tests/authentication.rs. DNS answers come from a JSON file of
{"name": "TXT text"} written by the test, never from a resolver.

  dkim_tool.py verify MESSAGE RECORDS   -> "dkim=pass N" / "dkim=fail N"
  dkim_tool.py arc MESSAGE RECORDS      -> "arc=<cv> <reason>"
  dkim_tool.py sign MESSAGE KEYPEM SELECTOR DOMAIN -> signed message on stdout
"""
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


def main():
    mode, message = sys.argv[1], open(sys.argv[2], "rb").read()
    if mode == "verify":
        d = dkim.DKIM(message)
        n = sum(1 for h in d.headers if h[0].lower() == b"dkim-signature")
        dnsfunc = dnsfunc_from(sys.argv[3])

        def one(i):
            try:
                return d.verify(idx=i, dnsfunc=dnsfunc)
            except dkim.DKIMException as e:
                print("signature", i, "failed:", e, file=sys.stderr)
                return False

        ok = n > 0 and all(one(i) for i in range(n))
        print(("dkim=pass" if ok else "dkim=fail"), n)
    elif mode == "arc":
        cv, _results, reason = dkim.arc_verify(message, dnsfunc=dnsfunc_from(sys.argv[3]))
        print("arc=" + cv.decode(), reason)
    elif mode == "sign":
        key = open(sys.argv[3], "rb").read()
        sig = dkim.sign(
            message,
            sys.argv[4].encode(),
            sys.argv[5].encode(),
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[b"from", b"to", b"subject", b"date"],
        )
        sys.stdout.buffer.write(sig + message)
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
