#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into fuzz/corpus/<target>/.

The seeds come from the test suite: request targets from tests/paths.rs,
JSON bodies from tests/body_policy.rs, metadata answers from tests/clients.rs,
token headers and claims like those of tests/tokens.rs, and the shipped
configs config/*.toml. Run from the repository root: python3 fuzz/seeds.py
(deterministic; the files are named by content hash).
"""
import base64, hashlib, hmac, json, os, re, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
NOW = 1_700_000_000              # the bearer_jwt target's clock
SECRET = b"fuzz-secret-fuzz-secret-fuzz-secret-0123"
HS_ISS, RS_ISS, AUD = "https://hs.test", "https://rs.test", "https://api.test"


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def write(target, data, limit):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if len(os.listdir(d)) >= limit:
        return
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def rust_strings(text):
    """Plain "..." literals (no raw strings), unescaped."""
    out = []
    for m in re.finditer(r'(?<![#\w])"((?:[^"\\\n]|\\.)*)"', text):
        s = m.group(1)
        s = re.sub(r"\\x([0-9a-fA-F]{2})", lambda x: chr(int(x.group(1), 16)), s)
        s = re.sub(r"\\u\{([0-9a-fA-F]+)\}", lambda x: chr(int(x.group(1), 16)), s)
        s = (s.replace("\\\\", "\x00BS").replace("\\t", "\t").replace("\\r", "\r")
             .replace("\\n", "\n").replace("\\0", "\0").replace('\\"', '"')
             .replace("\x00BS", "\\"))
        out.append(s)
    return out


def json_literals(text):
    """JSON objects written as r#"{...}"# / br#"{...}"# or json!({...})."""
    found = []
    for m in re.finditer(r'b?r#"(\{.*?\})"#', text, re.S):
        found.append(m.group(1))
    for m in re.finditer(r"json!\(", text):
        i, depth, start = m.end(), 0, m.end()
        while i < len(text):
            c = text[i]
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    found.append(text[start:i + 1])
                    break
            i += 1
    out = []
    for s in found:
        try:
            v = json.loads(s)
        except ValueError:
            continue
        if isinstance(v, dict):
            out.append(v)
    return out


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- request_target: one method byte, the target, optional header lines ---
targets = [s for s in rust_strings(read("tests/paths.rs")) if s.startswith("/")]
for i, t in enumerate(dict.fromkeys(targets)):
    write("request_target", bytes([i % 10]) + t.encode("utf-8", "surrogateescape"), 70)
for extra in [b"/v1.0/apiclients/x\nHost: a\nContent-Length: 1\nTransfer-Encoding: chunked",
              b"/v1.0/apiclients?access_token=x\nHost: a",
              b"/v1.0/apiclients\nHost: a\nX_Forwarded_For: 1.2.3.4",
              b"/static/a/b/c\nHost: a\nX-HTTP-Method-Override: DELETE"]:
    write("request_target", b"\x00" + extra, 80)

# --- bearer_jwt: mode 0 = Authorization value, 1 = header 0xFF claims, 2 = JSON ---
def claims(**kw):
    c = {"iss": HS_ISS, "sub": "subject-1", "aud": AUD, "client_id": "client-1",
         "iat": NOW - 60, "exp": NOW + 300, "realm": {"roles": ["readAPIClients"]}}
    for k, v in kw.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return json.dumps(c, separators=(",", ":"))

HS = '{"alg":"HS256","typ":"JWT"}'
pairs = [
    (HS, claims()), (HS, claims(exp=NOW - 3600)), (HS, claims(exp=NOW - 20)),
    (HS, claims(nbf=NOW + 3600)), (HS, claims(iat=NOW + 3600)), (HS, claims(exp=None)),
    (HS, claims(aud="https://other.test")), (HS, claims(aud=[AUD, "x"])), (HS, claims(aud=[1])),
    (HS, claims(exp="soon")), (HS, claims(exp=1e300)), (HS, claims(exp=-1)),
    (HS, claims(realm={"roles": "a b  c"})), (HS, claims(realm=[1])), (HS, claims(iss=RS_ISS)),
    (HS, claims(iss=None)), (HS, claims(iss=7)), (HS, claims(client_id=None, azp="app")),
    ('{"alg":"HS256","typ":"JWT","alg":"RS256"}', claims()),
    ('{"alg":"none","typ":"JWT"}', claims()), ('{"alg":"HS256","crit":["exp"]}', claims()),
    ('{"alg":"HS256","typ":"id+jwt"}', claims()), ('{"alg":"HS256","kid":7}', claims()),
    ('{"alg":"HS256","jku":"http://evil/","jwk":{"kty":"oct"}}', claims()),
    ('{"alg":"RS256","kid":"rsa-1"}', claims(iss=RS_ISS)), (HS, '{"exp":1,"exp":2}'),
    (HS, '{"a":' * 70 + "1" + "}" * 70),
]
for h, c in pairs:
    write("bearer_jwt", b"\x01" + h.encode() + b"\xff" + c.encode(), 200)

def hs_token(h, c):
    signing = b64(h.encode()) + "." + b64(c.encode())
    sig = hmac.new(SECRET, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(sig)

def rs_token(h, c):
    signing = b64(h.encode()) + "." + b64(c.encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign",
                          os.path.join(ROOT, "tests/fixtures/keys/rsa2048.pem")],
                         input=signing.encode(), capture_output=True, check=True).stdout
    return signing + "." + b64(sig)

for value in ["Bearer " + hs_token(HS, claims()), "bearer   " + hs_token(HS, claims()),
              "Bearer " + hs_token(HS, claims(exp=NOW - 3600)),
              "Bearer " + hs_token(HS, claims(aud="x")),
              "Bearer " + rs_token('{"alg":"RS256","kid":"rsa-1","typ":"JWT"}', claims(iss=RS_ISS)),
              "Bearer " + b64(b'{"alg":"none"}') + "." + b64(claims().encode()) + ".",
              "Basic dXNlcjpwYXNz", "Bearer", "Bearer a.b.c", "Bearer abc==", "Bearer a b"]:
    write("bearer_jwt", b"\x00" + value.encode(), 200)
for obj in json_literals(read("tests/tokens.rs"))[:10]:
    write("bearer_jwt", b"\x02" + json.dumps(obj).encode(), 200)
for raw in [b'{"a":1,"\\u0061":2}', b'{"a":{"b":1,"b":2}}', b'{"a":1} x', b"[1,2]",
            b'{"a":"\\ud800"}', b'{"n":-0,"m":1e400}']:
    write("bearer_jwt", b"\x02" + raw, 200)

# --- body_policy: selector byte (content type, caller), then the body ---
bodies = json_literals(read("tests/body_policy.rs"))
for i, obj in enumerate(bodies[:50]):
    write("body_policy", bytes([i % 4]) + json.dumps(obj).encode(), 60)
for raw in [b'{"clientName":"a","clientSecret":"Zx9-TOPSECRET-value-7Qp","ipFilterOp":"maybe"}',
            b'{"clientName":"a","id":"abc-1","ipFilters":["10.0.0.0/8","10.1.2.3/8"]}',
            b'{"clientName":"a","entitlements":["manageAPIClients","nosuch"]}', b"not json",
            b'{"clientName":"a","clientName":"b"}', b"   "]:
    write("body_policy", b"\x00" + raw, 60)

# --- client_metadata: selector byte (pointer, field names), then the answer ---
answers = json_literals(read("tests/clients.rs"))
for i, obj in enumerate(answers[:30]):
    write("client_metadata", b"\x00" + json.dumps(obj).encode(), 50)
    write("client_metadata", b"\x01" + json.dumps({"apiClients": [obj]}).encode(), 50)
for raw in [b'{"apiClients":[]}', b'{"status":{"active":true},"grants":{"roles":["a"]},'
            b'"network":{"op":"deny","list":["::1"]},"uuid":42}', b"null", b"[]", b"{"]:
    write("client_metadata", bytes([1 if b"apiClients" in raw else 4]) + raw, 50)

# --- config_load: the shipped configs and the test suite's config texts ---
for name in sorted(os.listdir(os.path.join(ROOT, "config"))):
    if name.endswith(".toml"):
        write("config_load", read("config/" + name).encode(), 40)
for rel in ["tests/config_check.rs", "tests/explain.rs"]:
    for m in re.finditer(r'r#"(.*?)"#', read(rel), re.S):
        if "[server]" in m.group(1) or "[[routes]]" in m.group(1) or "[[issuers]]" in m.group(1):
            write("config_load", m.group(1).encode(), 40)
base = None
for rel in ["fuzz/fuzz_targets/bearer_jwt.rs", "fuzz/fuzz_targets/body_policy.rs"]:
    m = re.search(r'const CONFIG: &str = r#"(.*?)"#', read(rel), re.S)
    write("config_load", m.group(1).encode(), 40)
    base = base or m.group(1).split("[[routes]]")[0]
# Route sections of the integration tests, under the bearer_jwt target's head.
for rel in sorted(os.listdir(os.path.join(ROOT, "tests"))):
    if rel.endswith(".rs"):
        for m in re.finditer(r'r#"(\s*\[\[routes\]\].*?)"#', read("tests/" + rel), re.S):
            write("config_load", (base + m.group(1)).encode(), 40)

for t in sorted(os.listdir(CORPUS)):
    print(t, len(os.listdir(os.path.join(CORPUS, t))))
