#!/usr/bin/env python3
"""How a liaison broker's certificate refusals look from Python grpcio.

Run (see README.md):  python refusals.py [--port 17443]

It builds a fresh PKI in ./run (liaison certs + mkcerts.py), starts
`liaison serve` on 127.0.0.1:PORT, runs every case in its own Python process
(so grpc-core's own stderr can be captured per case), collects what the broker
logged during each case, probes with `openssl s_client`, stops the broker and
writes ./run/results.json.  Single-case mode (used internally):
  refusals.py --case NAME --port P --dir RUN
"""
import argparse, datetime, json, os, re, shutil, signal, subprocess, sys, time, uuid

HERE = os.path.dirname(os.path.abspath(__file__))
LIAISON = os.environ.get(
    "LIAISON_BIN", os.path.join(HERE, "..", "..", "target", "release", "liaison"))
sys.path.insert(0, os.path.join(HERE, "gen"))

# ----------------------------------------------------------------------------
# client side (child process)
# ----------------------------------------------------------------------------

# case -> (trusted root, client cert name or None, client cert dir)
CASES = {
    "a_valid":         ("ca", "post1", "pki"),
    "b_no_cert":       ("ca", None, None),
    "c_other_ca":      ("ca", "post1", "pki-other"),    # other `liaison certs init` CA (same CA name)
    "c2_foreign_ca":   ("ca", "post1", "pki-foreign"),  # CA with a different name
    "d_expired":       ("ca", "expired", "pki"),
    "e_revoked":       ("ca", "post2", "pki"),      # revoked by the parent first
    "f_no_urn":        ("ca", "nourn", "pki"),
    "g_wrong_trust":   ("other", "post1", "pki"),   # client trusts pki-other/ca.crt (same CA name)
    "g2_foreign_trust": ("foreign", "post1", "pki"), # client trusts pki-foreign/ca.crt
}


def read(p):
    with open(p, "rb") as f:
        return f.read()


def channel(port, run, case, override=True):
    import grpc
    root, name, cdir = CASES[case]
    roots = read(os.path.join(run, {"ca": "pki", "other": "pki-other", "foreign": "pki-foreign"}[root], "ca.crt"))
    if name:
        creds = grpc.ssl_channel_credentials(
            root_certificates=roots,
            private_key=read(os.path.join(run, cdir, name + ".key")),
            certificate_chain=read(os.path.join(run, cdir, name + ".crt")))
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=roots)
    opts = [("grpc.use_local_subchannel_pool", 1)]  # never reuse another channel's connection
    if override:
        opts.append(("grpc.ssl_target_name_override", "localhost"))
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=opts)


def err(e):
    import grpc
    if isinstance(e, grpc.RpcError):
        return {"ok": False, "code": e.code().name, "code_value": e.code().value[0],
                "details": e.details(), "debug_error_string": e.debug_error_string(),
                "trailing_metadata": [list(m) for m in (e.trailing_metadata() or [])]}
    return {"ok": False, "exception": repr(e)}


def uuid7():
    ms = int(time.time() * 1000)
    b = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(b)))


def whoami_and_publish(ch):
    from google.protobuf.json_format import MessageToDict
    from liaison.v1 import alert_pb2, broker_pb2, broker_pb2_grpc
    stub = broker_pb2_grpc.BrokerStub(ch)
    out = {}
    t = time.monotonic()
    try:
        r = stub.WhoAmI(broker_pb2.WhoAmIRequest(), timeout=5)
        out["WhoAmI"] = {"ok": True, "response": MessageToDict(r)}
    except Exception as e:  # noqa
        out["WhoAmI"] = err(e)
    out["WhoAmI"]["ms"] = round((time.monotonic() - t) * 1000)
    a = alert_pb2.Alert(
        id=uuid7(), status=alert_pb2.STATUS_TEST, msg_type=alert_pb2.MSG_TYPE_ALERT,
        category=alert_pb2.CATEGORY_OTHER, urgency=alert_pb2.URGENCY_UNKNOWN,
        severity=alert_pb2.SEVERITY_UNKNOWN, certainty=alert_pb2.CERTAINTY_UNKNOWN,
        headline="interop refusal probe", marking=alert_pb2.Marking(tlp=alert_pb2.TLP_GREEN))
    a.sent.GetCurrentTime()
    t = time.monotonic()
    try:
        r = stub.Publish(broker_pb2.PublishRequest(alert=a), timeout=5)
        out["Publish"] = {"ok": True, "response": MessageToDict(r)}
    except Exception as e:  # noqa
        out["Publish"] = err(e)
    out["Publish"]["ms"] = round((time.monotonic() - t) * 1000)
    return out


def reflection(ch):
    from grpc_reflection.v1alpha import reflection_pb2 as rp, reflection_pb2_grpc as rpg
    import grpc
    out = {}
    # v1alpha through the stub grpcio-reflection ships
    try:
        resp = list(rpg.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([rp.ServerReflectionRequest(list_services="")]), timeout=5))
        out["v1alpha"] = {"ok": True, "services": [s.name for r in resp for s in r.list_services_response.service]}
    except Exception as e:  # noqa
        out["v1alpha"] = err(e)
    # same messages on the grpc.reflection.v1 path (wire-identical)
    try:
        call = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                request_serializer=rp.ServerReflectionRequest.SerializeToString,
                                response_deserializer=rp.ServerReflectionResponse.FromString)
        resp = list(call(iter([rp.ServerReflectionRequest(list_services="")]), timeout=5))
        out["v1"] = {"ok": True, "services": [s.name for r in resp for s in r.list_services_response.service]}
    except Exception as e:  # noqa
        out["v1"] = err(e)
    # and a file_containing_symbol lookup (does it serve descriptors too?)
    try:
        resp = list(rpg.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([rp.ServerReflectionRequest(file_containing_symbol="liaison.v1.Broker")]), timeout=5))
        r = resp[0]
        if r.HasField("file_descriptor_response"):
            from google.protobuf import descriptor_pb2
            names = []
            for raw in r.file_descriptor_response.file_descriptor_proto:
                fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
                names.append(fd.name)
            out["file_containing_symbol"] = {"ok": True, "files": names}
        else:
            out["file_containing_symbol"] = {"ok": True, "error_response": str(r.error_response)}
    except Exception as e:  # noqa
        out["file_containing_symbol"] = err(e)
    return out


def child(args):
    import grpc
    res = {"case": args.case}
    if args.case == "reflection":
        ch = channel(args.port, args.dir, "a_valid")
        res.update(reflection(ch))
    elif args.case == "b_no_cert_wait_for_ready":
        # what a client that waits for the channel (wait_for_ready=True) sees
        from liaison.v1 import broker_pb2, broker_pb2_grpc
        ch = channel(args.port, args.dir, "b_no_cert")
        t = time.monotonic()
        try:
            broker_pb2_grpc.BrokerStub(ch).WhoAmI(broker_pb2.WhoAmIRequest(), timeout=3, wait_for_ready=True)
            res["WhoAmI"] = {"ok": True}
        except Exception as e:  # noqa
            res["WhoAmI"] = err(e)
        res["WhoAmI"]["ms"] = round((time.monotonic() - t) * 1000)
    elif args.case.endswith("_no_override"):
        ch = channel(args.port, args.dir, args.case[:-len("_no_override")], override=False)
        res.update(whoami_and_publish(ch))
    elif args.case == "e_old_channel":
        # a channel opened BEFORE the revocation, used again AFTER it
        ch = channel(args.port, args.dir, "e_revoked")
        res["before"] = whoami_and_publish(ch)
        sys.stdout.write(json.dumps({"ready": True}) + "\n"); sys.stdout.flush()
        sys.stdin.readline()  # parent revokes, waits, then tells us to go on
        res["after"] = whoami_and_publish(ch)
        res["after_again"] = whoami_and_publish(ch)
    else:
        ch = channel(args.port, args.dir, args.case)
        res.update(whoami_and_publish(ch))
    ch.close()
    res["grpc_version"] = grpc.__version__
    print(json.dumps(res))


# ----------------------------------------------------------------------------
# orchestration (parent)
# ----------------------------------------------------------------------------

class Broker:
    def __init__(self, run, port):
        self.run, self.port = run, port
        self.errpath = os.path.join(run, "broker.stderr")
        self.err = open(self.errpath, "wb")
        self.p = subprocess.Popen(
            [LIAISON, "serve", "--listen", f"127.0.0.1:{port}", "--certs", "pki", "--data", "data",
             "--metrics", "off"], cwd=run, stdout=subprocess.PIPE, stderr=self.err)
        line = self.p.stdout.readline().decode()
        if "listening" not in line:
            raise SystemExit(f"broker did not start: {line!r}; see {self.errpath}")
        self.ready_line = line.strip()
        self.pos = 0

    def new_lines(self):
        time.sleep(0.7)
        with open(self.errpath, "rb") as f:
            f.seek(self.pos)
            data = f.read()
            self.pos += len(data)
        return [strip_ansi(l) for l in data.decode(errors="replace").splitlines() if l.strip()]

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill(); self.p.wait()
        self.err.close()


def strip_ansi(s):
    return re.sub(r"\x1b\[[0-9;]*m", "", s)


def sh(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{cmd} failed: {r.stderr}")
    return r.stdout


def make_pki(run):
    if os.path.exists(run):
        shutil.rmtree(run)
    os.makedirs(run)
    sh([LIAISON, "certs", "init", "--dir", "pki"], run)
    sh([LIAISON, "certs", "issue", "--dir", "pki", "--node", "urn:liaison:TJ:border-guard:post1", "--name", "post1"], run)
    sh([LIAISON, "certs", "issue", "--dir", "pki", "--node", "urn:liaison:TJ:border-guard:post2", "--name", "post2"], run)
    sh([LIAISON, "certs", "init", "--dir", "pki-other"], run)
    sh([LIAISON, "certs", "issue", "--dir", "pki-other", "--node", "urn:liaison:TJ:border-guard:post1", "--name", "post1"], run)
    sh([sys.executable, os.path.join(HERE, "mkcerts.py"), "pki"], run)


def run_child(case, port, run):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", case, "--port", str(port),
                        "--dir", run], capture_output=True, text=True, env=env, timeout=60)
    try:
        res = json.loads(r.stdout.strip().splitlines()[-1])
    except Exception:  # noqa
        res = {"case": case, "child_failed": r.stdout + r.stderr}
    res["client_stderr"] = [l for l in r.stderr.splitlines() if l.strip()]
    return res


def openssl_probe(run, port, label, extra):
    if not shutil.which("openssl"):
        return None
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-alpn", "h2",
           "-servername", "localhost", "-verify_return_error"] + extra
    # keep stdin open for 1.5 s so s_client reads the post-handshake alert of TLS 1.3
    p = subprocess.Popen(cmd, cwd=run, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    time.sleep(1.5)
    try:
        out, _ = p.communicate("", timeout=10)
    except subprocess.TimeoutExpired:
        p.kill(); out, _ = p.communicate()
    keep = [l for l in out.splitlines() if re.search(
        r"alert|error|Verify return|verify error|ALPN|Protocol|Cipher is|Peer certificate|"
        r"Acceptable client certificate|closed|errno|DONE|New, ", l)]
    return {"label": label, "cmd": " ".join(cmd), "rc": p.returncode, "lines": keep}


def parent(args):
    run = args.dir
    make_pki(run)
    broker = Broker(run, args.port)
    results = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "broker_ready": broker.ready_line, "broker_startup_log": broker.new_lines(),
               "python": sys.version, "cases": {}, "openssl": []}
    try:
        r = subprocess.run([LIAISON, "--version"], capture_output=True, text=True)
        results["liaison_version"] = r.stdout.strip()
        import grpc, google.protobuf
        results["grpcio"] = grpc.__version__
        results["protobuf"] = google.protobuf.__version__
        try:
            from importlib.metadata import version
            results["grpcio-tools"] = version("grpcio-tools")
            results["grpcio-reflection"] = version("grpcio-reflection")
        except Exception:  # noqa
            pass
        if shutil.which("openssl"):
            results["openssl_version"] = subprocess.run(["openssl", "version"], capture_output=True,
                                                        text=True).stdout.strip()

        for case in ["a_valid", "a_valid_no_override", "b_no_cert", "b_no_cert_wait_for_ready", "c_other_ca", "c2_foreign_ca", "d_expired", "f_no_urn",
                     "g_wrong_trust", "g_wrong_trust_no_override", "g2_foreign_trust", "reflection"]:
            res = run_child(case, args.port, run)
            res["broker_log"] = broker.new_lines()
            results["cases"][case] = res
            print(f"{case}: done", file=sys.stderr)

        # e: keep a channel open from before the revocation, then revoke and use a NEW channel
        old = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--case", "e_old_channel",
                                "--port", str(args.port), "--dir", run],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        old.stdout.readline()  # {"ready": true}: post2 worked before the revocation
        pre = broker.new_lines()
        revoke_out = sh([LIAISON, "certs", "revoke", "--dir", "pki", "--name", "post2"], run).strip()
        time.sleep(3.5)
        reload_log = broker.new_lines()
        res = run_child("e_revoked", args.port, run)
        res["revoke_cmd_output"] = revoke_out
        res["broker_log_before_revocation"] = pre
        res["broker_log_after_revoke_before_call"] = reload_log
        res["broker_log"] = broker.new_lines()
        results["cases"]["e_revoked"] = res
        out, errtxt = old.communicate("go\n", timeout=60)
        try:
            oldres = json.loads(out.strip().splitlines()[-1])
        except Exception:  # noqa
            oldres = {"child_failed": out + errtxt}
        oldres["client_stderr"] = [l for l in errtxt.splitlines() if l.strip()]
        oldres["broker_log"] = broker.new_lines()
        results["cases"]["e_old_channel"] = oldres
        print("e_revoked: done", file=sys.stderr)

        # openssl's view
        probes = [
            ("b_no_cert", ["-CAfile", "pki/ca.crt"]),
            ("c_other_ca", ["-CAfile", "pki/ca.crt", "-cert", "pki-other/post1.crt", "-key", "pki-other/post1.key"]),
            ("c2_foreign_ca", ["-CAfile", "pki/ca.crt", "-cert", "pki-foreign/post1.crt", "-key", "pki-foreign/post1.key"]),
            ("d_expired", ["-CAfile", "pki/ca.crt", "-cert", "pki/expired.crt", "-key", "pki/expired.key"]),
            ("e_revoked", ["-CAfile", "pki/ca.crt", "-cert", "pki/post2.crt", "-key", "pki/post2.key"]),
            ("a_valid", ["-CAfile", "pki/ca.crt", "-cert", "pki/post1.crt", "-key", "pki/post1.key"]),
            ("g_wrong_trust", ["-CAfile", "pki-other/ca.crt", "-cert", "pki/post1.crt", "-key", "pki/post1.key"]),
            ("g2_foreign_trust", ["-CAfile", "pki-foreign/ca.crt", "-cert", "pki/post1.crt", "-key", "pki/post1.key"]),
        ]
        for label, extra in probes:
            pr = openssl_probe(run, args.port, label, extra)
            if pr:
                pr["broker_log"] = broker.new_lines()
                results["openssl"].append(pr)
    finally:
        broker.stop()
        results["broker_shutdown_log"] = broker.new_lines() if not broker.err.closed else None
        with open(broker.errpath, "rb") as f:
            f.seek(broker.pos)
            results["broker_shutdown_log"] = [strip_ansi(l) for l in f.read().decode().splitlines()]
        with open(os.path.join(run, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {run}/results.json", file=sys.stderr)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=17443)
    ap.add_argument("--dir", default=os.path.join(HERE, "run"))
    ap.add_argument("--case")
    a = ap.parse_args()
    a.dir = os.path.abspath(a.dir)
    child(a) if a.case else parent(a)
