"""Print a compact per-case summary of run/results.json."""
import json, os, sys
p = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "run", "results.json")
r = json.load(open(p))
print("python", r["python"].split()[0], "grpcio", r["grpcio"], "protobuf", r["protobuf"], r.get("openssl_version", ""))
for name, c in r["cases"].items():
    print(f"== {name}")
    for k in ("before", "after"):
        if k in c:
            for call, v in c[k].items():
                print(f"  [{k}] {call}: {v.get('code', 'OK')} {v.get('ms')}ms {v.get('details', v.get('response', ''))}")
    for call in ("WhoAmI", "Publish"):
        if call in c:
            v = c[call]
            print(f"  {call}: {v.get('code', 'OK')} {v.get('ms')}ms {v.get('details', v.get('response', ''))}")
            if not v["ok"] and v["debug_error_string"] != v["details"] and call == "WhoAmI":
                print(f"    debug: {v['debug_error_string']}")
    for k in ("v1alpha", "v1", "file_containing_symbol"):
        if k in c:
            print(f"  {k}: {c[k]}")
    for l in c.get("client_stderr", []):
        print(f"  client stderr: {l}")
    for k in ("broker_log_after_revoke_before_call", "broker_log"):
        for l in c.get(k, []):
            print(f"  broker[{k}]: {l}")
for o in r["openssl"]:
    print(f"== openssl {o['label']} rc={o['rc']}")
    for l in o["lines"]:
        print("   ", l)
    for l in o["broker_log"]:
        print("   broker:", l)
