"""Make the extra client certificates that `liaison certs` cannot: an expired
one and one without the urn:liaison SAN URI, both signed by pki/ca.key."""
import datetime, sys
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

D = sys.argv[1] if len(sys.argv) > 1 else "pki"
ca_cert = x509.load_pem_x509_certificate(open(f"{D}/ca.crt", "rb").read())
ca_key = serialization.load_pem_private_key(open(f"{D}/ca.key", "rb").read(), None)
now = datetime.datetime.now(datetime.timezone.utc)

def issue(name, cn, san, not_before, not_after):
    key = ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca_cert.subject)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    open(f"{D}/{name}.crt", "wb").write(cert.public_bytes(serialization.Encoding.PEM))
    open(f"{D}/{name}.key", "wb").write(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    print(f"wrote {D}/{name}.crt {D}/{name}.key")

# d. expired: valid 10 days ago .. 1 day ago, otherwise a normal node cert
issue("expired", "urn:liaison:TJ:border-guard:expired1",
      [x509.UniformResourceIdentifier("urn:liaison:TJ:border-guard:expired1")],
      now - datetime.timedelta(days=10), now - datetime.timedelta(days=1))
# f. signed by the right CA, valid, but no urn:liaison SAN URI (DNS SAN only)
issue("nourn", "post3.border-guard.tj",
      [x509.DNSName("post3.border-guard.tj")],
      now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=30))

# c2/g2. a foreign CA with a DIFFERENT subject name ("Foreign test CA") and a
# node cert from it carrying a well-formed urn:liaison SAN URI. (Two
# `liaison certs init` CAs share the subject "CN = Liaison development CA", so a
# cert from one looks to the other like a bad signature rather than an unknown
# issuer.)
import os
F = os.path.join(os.path.dirname(os.path.abspath(D)) or ".", "pki-foreign")
os.makedirs(F, exist_ok=True)
fkey = ec.generate_private_key(ec.SECP256R1())
fname = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Foreign test CA")])
fca = (x509.CertificateBuilder().subject_name(fname).issuer_name(fname)
       .public_key(fkey.public_key()).serial_number(x509.random_serial_number())
       .not_valid_before(now - datetime.timedelta(minutes=5))
       .not_valid_after(now + datetime.timedelta(days=30))
       .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
       .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
       .sign(fkey, hashes.SHA256()))
open(f"{F}/ca.crt", "wb").write(fca.public_bytes(serialization.Encoding.PEM))
open(f"{F}/ca.key", "wb").write(fkey.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
print(f"wrote {F}/ca.crt {F}/ca.key")
ca_cert, ca_key, D = fca, fkey, F
issue("post1", "urn:liaison:TJ:border-guard:post1",
      [x509.UniformResourceIdentifier("urn:liaison:TJ:border-guard:post1")],
      now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=30))
