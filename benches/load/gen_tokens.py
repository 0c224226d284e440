#!/usr/bin/env python3
"""Keys and tokens for the load harness (benches/load/run.sh).

Two sub-commands:

  keys   DIR                  fallback when `portcullis keygen` is unavailable: writes
                              DIR/{rs,es}/{private.pem,public.pem,jwks.json} (RSA 2048 / P-256)
  tokens --keys DIR --out DIR [--pool N] [--mem-pool M] ...
                              the reusable token per algorithm, the distinct-token pools,
                              the memory-phase pool and the negative tokens the curl checks use.

Needs the `cryptography` package (run.sh installs it with pip when missing). Tokens are
signed here rather than with `portcullis token` because the harness needs tens of
thousands of them and a process per token is too slow. The reusable tokens are also minted
with `portcullis token` by run.sh when that command exists, as a cross-check.

Written files (in --out):
  rs.token / es.token             one valid token (entitlement manageAPIClients, exp 1 h)
  rs.pool / es.pool               N distinct valid tokens, one per line (distinct `jti`/`sub`)
  mem.pool                        M distinct valid ES256 tokens of the memory issuer, each with
                                  its own client_id (fills both the token and client caches)
  check/<alg>.<case>              tokens the curl checks must see refused:
      badsig    signed by another key of the same type, with the real key's kid
      tampered  a no-entitlement token whose payload was swapped for one granting the
                entitlement, original signature kept
      expired   exp one hour in the past (beyond every target's leeway)
      noent     valid, but without manageAPIClients (must be 403)
      wrongaud  audience "someone-else"
      wrongiss  issuer of the other algorithm's route
      algnone   alg "none", empty signature
      otheralg  a valid token of the other algorithm (wrong route for it)
"""
import argparse
import base64
import json
import os
import sys
import time
from multiprocessing import Pool

try:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
except ImportError:  # pragma: no cover - run.sh installs it
    sys.exit("gen_tokens.py: the python package 'cryptography' is missing (pip install cryptography)")


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_json(obj) -> str:
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


def int_b64u(n: int, length: int | None = None) -> str:
    length = length or (n.bit_length() + 7) // 8
    return b64u(n.to_bytes(length, "big"))


# --- keys ---------------------------------------------------------------------------


def load_private(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def public_jwk(key, alg, kid):
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        jwk = {"kty": "RSA", "n": int_b64u(nums.n), "e": int_b64u(nums.e)}
    else:
        nums = pub.public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": int_b64u(nums.x, 32), "y": int_b64u(nums.y, 32)}
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


def write_key_dir(path, key, alg, kid):
    os.makedirs(path, exist_ok=True)
    priv = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(os.path.join(path, "private.pem"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv)
    with open(os.path.join(path, "public.pem"), "wb") as f:
        f.write(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    with open(os.path.join(path, "jwks.json"), "w") as f:
        json.dump({"keys": [public_jwk(key, alg, kid)]}, f, indent=2)


def cmd_keys(args):
    write_key_dir(
        os.path.join(args.dir, "rs"),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "RS256",
        "bench-rs",
    )
    write_key_dir(os.path.join(args.dir, "es"), ec.generate_private_key(ec.SECP256R1()), "ES256", "bench-es")


# --- signing ------------------------------------------------------------------------


class Signer:
    def __init__(self, key_dir, alg):
        self.alg = alg
        self.key = load_private(os.path.join(key_dir, "private.pem"))
        with open(os.path.join(key_dir, "jwks.json")) as f:
            jwks = json.load(f)
        keys = jwks.get("keys", [])
        if len(keys) != 1:
            raise SystemExit(f"{key_dir}/jwks.json: expected exactly one key, found {len(keys)}")
        self.kid = keys[0].get("kid")

    def raw_sign(self, signing_input: bytes) -> bytes:
        if self.alg == "RS256":
            return self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        der = self.key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def header(self):
        h = {"alg": self.alg, "typ": "JWT"}
        if self.kid:
            h["kid"] = self.kid
        return h

    def token(self, claims, header=None) -> str:
        signing_input = b64u_json(header or self.header()) + "." + b64u_json(claims)
        return signing_input + "." + b64u(self.raw_sign(signing_input.encode("ascii")))


def claims(iss, aud, sub, now, ttl, entitlements, **extra):
    c = {
        "iss": iss,
        "sub": sub,
        "aud": aud,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "entitlements": entitlements,
    }
    c.update(extra)
    return c


_WORKER = {}


def _init_worker(key_dir, alg):
    _WORKER["signer"] = Signer(key_dir, alg)


def _sign_range(job):
    start, count, iss, aud, now, ttl, ents, prefix, with_client = job
    signer = _WORKER["signer"]
    out = []
    for i in range(start, start + count):
        extra = {"jti": f"{prefix}-{i:07d}"}
        if with_client:
            extra["client_id"] = f"client-{i:07d}"
        out.append(signer.token(claims(iss, aud, f"{prefix}-user-{i:07d}", now, ttl, ents, **extra)))
    return out


def write_pool(path, key_dir, alg, count, iss, aud, now, ttl, ents, prefix, with_client, procs):
    chunk = max(1, (count + procs * 8 - 1) // (procs * 8))
    jobs = [
        (s, min(chunk, count - s), iss, aud, now, ttl, ents, prefix, with_client)
        for s in range(0, count, chunk)
    ]
    with Pool(procs, initializer=_init_worker, initargs=(key_dir, alg)) as pool, open(path, "w") as f:
        for batch in pool.imap(_sign_range, jobs):
            f.write("\n".join(batch))
            f.write("\n")


def cmd_tokens(args):
    now = int(time.time())
    ents = ["manageAPIClients", "readAPIClients"]
    os.makedirs(os.path.join(args.out, "check"), exist_ok=True)
    algs = {
        "rs": ("RS256", os.path.join(args.keys, "rs"), args.iss_rs),
        "es": ("ES256", os.path.join(args.keys, "es"), args.iss_es),
    }
    signers = {name: Signer(d, alg) for name, (alg, d, _) in algs.items()}

    # Attacker keys: same type, never in any JWKS.
    attackers = {
        "rs": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "es": ec.generate_private_key(ec.SECP256R1()),
    }

    for name, (alg, key_dir, iss) in algs.items():
        s = signers[name]
        other = "es" if name == "rs" else "rs"
        good = claims(iss, args.aud, "bench-user", now, args.ttl, ents, client_id="bench-client")
        with open(os.path.join(args.out, f"{name}.token"), "w") as f:
            f.write(s.token(good) + "\n")

        def put(case, tok):
            with open(os.path.join(args.out, "check", f"{name}.{case}"), "w") as f:
                f.write(tok + "\n")

        # Bad signature: the attacker signs with the victim's kid.
        attacker = Signer.__new__(Signer)
        attacker.alg, attacker.key, attacker.kid = alg, attackers[name], s.kid
        put("badsig", attacker.token(good))
        # Tampered payload: a real signature over a payload without the entitlement,
        # the payload swapped for one that grants it.
        noent = claims(iss, args.aud, "bench-user", now, args.ttl, ["readAPIClients"], client_id="bench-client")
        signed_noent = s.token(noent)
        h, _, sig = signed_noent.split(".")
        put("tampered", h + "." + b64u_json(good) + "." + sig)
        put("expired", s.token(claims(iss, args.aud, "bench-user", now - 7200, 3600, ents, client_id="bench-client")))
        put("noent", signed_noent)
        put("wrongaud", s.token(claims(iss, "someone-else", "bench-user", now, args.ttl, ents, client_id="bench-client")))
        put("wrongiss", s.token(claims(algs[other][2], args.aud, "bench-user", now, args.ttl, ents, client_id="bench-client")))
        put("algnone", b64u_json({"alg": "none", "typ": "JWT"}) + "." + b64u_json(good) + ".")
        other_good = claims(algs[other][2], args.aud, "bench-user", now, args.ttl, ents, client_id="bench-client")
        put("otheralg", signers[other].token(other_good))

    t0 = time.time()
    for name, (alg, key_dir, iss) in algs.items():
        if args.pool > 0:
            write_pool(
                os.path.join(args.out, f"{name}.pool"), key_dir, alg, args.pool, iss, args.aud,
                now, args.ttl, ents, f"pool-{name}", False, args.procs,
            )
    if args.mem_pool > 0:
        write_pool(
            os.path.join(args.out, "mem.pool"), os.path.join(args.keys, "es"), "ES256", args.mem_pool,
            args.iss_mem, args.aud, now, args.ttl, ents, "mem", True, args.procs,
        )
    print(
        f"tokens: {args.pool} per algorithm, {args.mem_pool} for the memory phase, "
        f"in {time.time() - t0:.1f} s ({args.procs} processes)"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keys")
    k.add_argument("dir")
    t = sub.add_parser("tokens")
    t.add_argument("--keys", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--pool", type=int, default=20000)
    t.add_argument("--mem-pool", type=int, default=0)
    t.add_argument("--iss-rs", default="https://bench-rs.portcullis.test")
    t.add_argument("--iss-es", default="https://bench-es.portcullis.test")
    t.add_argument("--iss-mem", default="https://bench-mem.portcullis.test")
    t.add_argument("--aud", default="portcullis")
    t.add_argument("--ttl", type=int, default=3600)
    t.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    {"keys": cmd_keys, "tokens": cmd_tokens}[args.cmd](args)


if __name__ == "__main__":
    main()
