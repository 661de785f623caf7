"""dkimpy (an implementation independent of petrel's mail-auth) for
tests/authentication.rs. DNS answers come from a JSON file of
{"name": "TXT text"} written by the test, never from a resolver.

  dkim_tool.py verify MESSAGE RECORDS   -> "dkim=pass N" / "dkim=fail N"
  dkim_tool.py arc MESSAGE RECORDS      -> "arc=<cv> <reason>"
  dkim_tool.py sign MESSAGE KEYPEM SELECTOR DOMAIN -> signed message on stdout
  dkim_tool.py sign-ed25519 MESSAGE KEYPEM SELECTOR DOMAIN (petrel's PKCS#8 key)
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
    elif mode in ("sign", "sign-ed25519"):
        key = open(sys.argv[3], "rb").read()
        algorithm = b"rsa-sha256"
        if mode == "sign-ed25519":
            # dkimpy takes an Ed25519 key as the base64 of its 32-octet
            # seed: in petrel's PKCS#8 (RFC 8410) it follows the 16-octet
            # prefix 30 .. 04 22 04 20.
            der = base64.b64decode(b"".join(l for l in key.splitlines() if not l.startswith(b"-----")))
            assert der[12:16] == b"\x04\x22\x04\x20", der[:16].hex()
            key = base64.b64encode(der[16:48])
            algorithm = b"ed25519-sha256"
        sig = dkim.sign(
            message,
            sys.argv[4].encode(),
            sys.argv[5].encode(),
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=algorithm,
            include_headers=[b"from", b"to", b"subject", b"date"],
        )
        sys.stdout.buffer.write(sig + message)
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
