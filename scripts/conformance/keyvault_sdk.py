"""Proves the Key Vault + Entra emulator faithful: the official azure-keyvault-secrets,
azure-keyvault-certificates and azure-identity packages (pinned in scripts/requirements.txt) run against `keyfleet-testkit keyvault`.

Usage: keyvault_sdk.py VAULT_URL AUTHORITY_URL STATE_DIR
Needs REQUESTS_CA_BUNDLE pointing at STATE_DIR/ca.pem. Prints one line per check, then one summary
line; exits non-zero when any check fails.
"""

import base64
import datetime
import hashlib
import json
import os
import ssl
import sys
import time
import traceback
import urllib.request

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import ClientSecretCredential, ManagedIdentityCredential, WorkloadIdentityCredential
from azure.keyvault.certificates import CertificateClient, CertificateContentType, CertificatePolicy
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

VAULT, AUTHORITY, STATE = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
TENANT, CLIENT_ID, CLIENT_SECRET = "keyfleet-test", "keyfleet-hub", "keyfleet-hub-secret"
SSL = ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])
FAST = {"_polling_interval": 0.05}


def admin(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{AUTHORITY}/_emulator/{path}", data=data, method=method,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, context=SSL) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def counter(operation, outcome, principal=None):
    rows = admin("GET", "counters")["calls"]
    return sum(r["count"] for r in rows if r["operation"] == operation and r["outcome"] == outcome
               and (principal is None or r["principal"] == principal))


def secret_credential(secret=CLIENT_SECRET, client_id=CLIENT_ID):
    return ClientSecretCredential(TENANT, client_id, secret, authority=AUTHORITY, disable_instance_discovery=True)


def client(credential):
    return SecretClient(VAULT, credential, verify_challenge_resource=False)


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def check_set_get_versions():
    c = client(secret_credential())
    first = c.set_secret("conf-db", "value-one", tags={"team": "fleet"}, content_type="text/plain")
    expect(len(first.properties.version) == 32, f"version id {first.properties.version!r}")
    expect(first.properties.tags == {"team": "fleet"}, f"tags {first.properties.tags}")
    second = c.set_secret("conf-db", "value-two")
    expect(second.properties.version != first.properties.version, "each set makes a new version")
    expect(c.get_secret("conf-db").value == "value-two", "latest")
    old = c.get_secret("conf-db", first.properties.version)
    expect(old.value == "value-one" and old.properties.content_type == "text/plain", "by version")
    expect(c.get_secret("CONF-DB").value == "value-two", "names are case-insensitive")
    try:
        c.get_secret("conf-missing")
        raise AssertionError("missing secret was served")
    except ResourceNotFoundError as error:
        expect(error.error.code == "SecretNotFound", f"code {error.error.code}")


def check_list_paged():
    c = client(secret_credential())
    for i in range(60):
        c.set_secret("conf-many", f"v{i}")
    before = counter("list_versions", "ok")
    pages = list(c.list_properties_of_secret_versions("conf-many").by_page())
    versions = [p for page in pages for p in page]
    expect(len(versions) == 60, f"{len(versions)} versions listed")
    expect(len({v.version for v in versions}) == 60, "distinct versions")
    expect(counter("list_versions", "ok") - before == 3, "60 versions take 3 pages of 25")
    small = list(c.list_properties_of_secret_versions("conf-many", max_page_size=7).by_page())
    expect(len(small) == 9, f"{len(small)} pages of 7")
    names = {s.name for s in c.list_properties_of_secrets()}
    expect({"conf-db", "conf-many"} <= names, f"names {sorted(names)}")
    admin("POST", "faults", {"emptyFirstPage": True})
    try:
        names = {s.name for s in c.list_properties_of_secrets()}
        expect({"conf-db", "conf-many"} <= names, "empty first page followed")
    finally:
        admin("POST", "faults", {"emptyFirstPage": False})


def check_update_disable():
    c = client(secret_credential())
    created = c.set_secret("conf-disable", "secret-value")
    updated = c.update_secret_properties("conf-disable", created.properties.version, enabled=False,
                                         tags={"state": "off"})
    expect(updated.enabled is False and updated.tags == {"state": "off"}, "update applied")
    try:
        c.get_secret("conf-disable", created.properties.version)
        raise AssertionError("disabled version was served")
    except HttpResponseError as error:
        expect(error.status_code == 403, f"status {error.status_code}")
        expect(error.error.code == "Forbidden", f"code {error.error.code}")
        inner = error.error.innererror or {}
        expect(inner.get("code") == "SecretDisabled", f"inner {inner}")
    listed = [p for p in c.list_properties_of_secret_versions("conf-disable")]
    expect([p.enabled for p in listed] == [False], "listing shows the disabled version")


def check_delete_recover_purge():
    c = client(secret_credential())
    c.set_secret("conf-gone", "bye")
    deleted = c.begin_delete_secret("conf-gone", **FAST).result()
    expect(deleted.name == "conf-gone" and deleted.recovery_id.endswith("/deletedsecrets/conf-gone"), "deleted")
    expect("conf-gone" in {d.name for d in c.list_deleted_secrets()}, "listed as deleted")
    expect(c.get_deleted_secret("conf-gone").scheduled_purge_date is not None, "purge date")
    c.begin_recover_deleted_secret("conf-gone", **FAST).result()
    expect(c.get_secret("conf-gone").value == "bye", "recovered")
    c.begin_delete_secret("conf-gone", **FAST).result()
    c.purge_deleted_secret("conf-gone")
    try:
        c.get_deleted_secret("conf-gone")
        raise AssertionError("purged secret still deleted-listed")
    except ResourceNotFoundError:
        pass
    c.set_secret("conf-gone", "again")


def check_wrong_secret():
    c = client(secret_credential(secret="not-the-secret"))
    try:
        c.get_secret("conf-db")
        raise AssertionError("wrong client secret was accepted")
    except ClientAuthenticationError as error:
        expect("AADSTS7000215" in str(error), str(error))


def check_throttling_retried():
    c = client(secret_credential())
    c.get_secret("conf-db")
    before = counter("get", "throttled")
    admin("POST", "faults", {"throttleNext": 2, "retryAfterMs": 50})
    expect(c.get_secret("conf-db").value == "value-two", "served after 429s")
    expect(counter("get", "throttled") - before == 2, "two 429s were answered and retried")
    admin("POST", "faults", {"throttleNext": 1, "retryAfterSeconds": 1, "retryAfterMs": 0})
    started = time.monotonic()
    expect(c.get_secret("conf-db").value == "value-two", "served after Retry-After: 1")
    expect(time.monotonic() - started >= 0.9, "Retry-After seconds honoured")
    admin("DELETE", "faults")


def check_commit_then_503_duplicates_a_retried_set():
    c = client(secret_credential())
    admin("POST", "faults", {"commitThenErrorNext": 1})
    try:
        c.set_secret("conf-retried", "written-twice")
    finally:
        admin("DELETE", "faults")
    versions = list(c.list_properties_of_secret_versions("conf-retried"))
    expect(len(versions) == 2, f"{len(versions)} versions: the SDK retried the committed PUT")


def check_workload_identity():
    token = admin("POST", "federated-token", {})["token"]
    path = os.path.join(STATE, "federated-token")
    with open(path, "w") as f:
        f.write(token)
    credential = WorkloadIdentityCredential(tenant_id=TENANT, client_id=CLIENT_ID, token_file_path=path,
                                            authority=AUTHORITY)
    expect(client(credential).get_secret("conf-db").value == "value-two", "workload identity read")
    stranger = admin("POST", "federated-token", {"subject": "system:serviceaccount:other:other"})["token"]
    with open(path, "w") as f:
        f.write(stranger)
    wrong = WorkloadIdentityCredential(tenant_id=TENANT, client_id=CLIENT_ID, token_file_path=path,
                                       authority=AUTHORITY)
    try:
        client(wrong).get_secret("conf-db")
        raise AssertionError("unregistered subject was accepted")
    except ClientAuthenticationError as error:
        expect("AADSTS70021" in str(error), str(error))


def check_managed_identity():
    os.environ["IDENTITY_ENDPOINT"] = f"{AUTHORITY}/msi/token"
    os.environ["IDENTITY_HEADER"] = "keyfleet-identity-header"
    try:
        credential = ManagedIdentityCredential(client_id=CLIENT_ID)
        expect(client(credential).get_secret("conf-db").value == "value-two", "managed identity read")
    finally:
        del os.environ["IDENTITY_ENDPOINT"], os.environ["IDENTITY_HEADER"]


def test_certificate(common_name):
    """A self-signed certificate and its key, as an operator would import into Key Vault."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=90))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
                   .sign(key, hashes.SHA256()))
    return key, certificate


def check_certificates():
    certs = CertificateClient(VAULT, secret_credential(), verify_challenge_resource=False)
    secrets = client(secret_credential())
    key, first = test_certificate("conf-tls.example")
    pem = (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
           + first.public_bytes(serialization.Encoding.PEM))
    imported = certs.import_certificate("conf-tls", pem,
                                        policy=CertificatePolicy(content_type=CertificateContentType.pem,
                                                                 issuer_name="Unknown"))
    expect(imported.cer == first.public_bytes(serialization.Encoding.DER), "import returns the DER certificate")
    latest = certs.get_certificate("conf-tls")
    expect(latest.cer == first.public_bytes(serialization.Encoding.DER), "cer is the DER certificate")
    thumbprint = hashlib.sha1(latest.cer).digest()
    expect(latest.properties.x509_thumbprint == thumbprint, "x5t is the SHA-1 thumbprint")
    expect(latest.properties.version == imported.properties.version and len(latest.properties.version) == 32,
           "version id")
    expect(latest.properties.expires_on is not None
           and abs((latest.properties.expires_on - first.not_valid_after_utc).total_seconds()) < 1,
           "exp is the certificate's notAfter")
    expect(latest.policy is not None and latest.policy.content_type == CertificateContentType.pem,
           f"policy content type {latest.policy and latest.policy.content_type}")
    expect(latest.policy.subject == "CN=conf-tls.example", f"policy subject {latest.policy.subject}")
    expect(latest.secret_id.endswith(f"/secrets/conf-tls/{latest.properties.version}"), latest.secret_id)
    expect(latest.key_id.endswith(f"/keys/conf-tls/{latest.properties.version}"), latest.key_id)
    # The companion secret: key and certificate, PEM as imported.
    companion = secrets.get_secret("conf-tls")
    expect(companion.properties.content_type == "application/x-pem-file", companion.properties.content_type)
    expect(companion.properties.managed is True, "the companion secret is managed")
    expect(companion.properties.key_id == latest.key_id, "kid of the companion secret")
    expect(companion.properties.version == latest.properties.version, "same version as the certificate")
    loaded_key = serialization.load_pem_private_key(companion.value.encode(), None)
    expect(loaded_key.private_numbers() == key.private_numbers(), "the companion secret holds the key")
    expect(x509.load_pem_x509_certificate(companion.value.encode()) == first, "and the certificate")
    # A second version in PFX form.
    key2, second = test_certificate("conf-tls.example")
    pfx = pkcs12.serialize_key_and_certificates(b"conf-tls", key2, second, None,
                                                serialization.BestAvailableEncryption(b"import-pass"))
    renewed = certs.import_certificate("conf-tls", pfx, password="import-pass",
                                       policy=CertificatePolicy(content_type=CertificateContentType.pkcs12,
                                                                issuer_name="Unknown"))
    expect(renewed.properties.version != imported.properties.version, "a new version")
    old = certs.get_certificate_version("conf-tls", imported.properties.version)
    expect(old.cer == first.public_bytes(serialization.Encoding.DER), "get_certificate_version")
    expect(certs.get_certificate("conf-tls").cer == second.public_bytes(serialization.Encoding.DER), "latest")
    versions = list(certs.list_properties_of_certificate_versions("conf-tls"))
    expect(sorted(v.version for v in versions) == sorted([imported.properties.version, renewed.properties.version]),
           f"{len(versions)} versions listed")
    expect(all(v.x509_thumbprint for v in versions), "listed versions carry x5t")
    companion = secrets.get_secret("conf-tls")
    expect(companion.properties.content_type == "application/x-pkcs12", companion.properties.content_type)
    # Key Vault keeps the PFX without a password.
    key_back, cert_back, _ = pkcs12.load_key_and_certificates(base64.b64decode(companion.value), b"")
    expect(cert_back == second and key_back.private_numbers() == key2.private_numbers(), "the PFX companion")
    secret_versions = {p.version for p in secrets.list_properties_of_secret_versions("conf-tls")}
    expect(secret_versions == {imported.properties.version, renewed.properties.version},
           "the companion secret's versions move with the certificate")
    expect(secrets.get_secret("conf-tls", imported.properties.version).properties.content_type
           == "application/x-pem-file", "the companion secret's old version")
    expect("conf-tls" in {c.name for c in certs.list_properties_of_certificates()}, "listed")
    try:
        certs.get_certificate("conf-no-such-cert")
        raise AssertionError("missing certificate was served")
    except ResourceNotFoundError as error:
        expect(error.error.code == "CertificateNotFound", f"code {error.error.code}")


def check_permissions():
    reader = client(secret_credential(secret="reader-secret", client_id="conf-reader"))
    expect(reader.get_secret("conf-db").value == "value-two", "get allowed")
    try:
        list(reader.list_properties_of_secrets())
        raise AssertionError("list was allowed without the list permission")
    except HttpResponseError as error:
        expect(error.status_code == 403 and error.error.code == "Forbidden", f"{error.status_code}")


CHECKS = [
    check_set_get_versions,
    check_list_paged,
    check_update_disable,
    check_delete_recover_purge,
    check_wrong_secret,
    check_throttling_retried,
    check_commit_then_503_duplicates_a_retried_set,
    check_workload_identity,
    check_managed_identity,
    check_permissions,
    check_certificates,
]


def main():
    failed = []
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            check()
            print(f"ok   {name}")
        except Exception as error:  # noqa: BLE001 - every failure is reported, then counted
            failed.append(name)
            print(f"FAIL {name}: {type(error).__name__}: {error}")
            traceback.print_exc(file=sys.stderr)
    passed = len(CHECKS) - len(failed)
    status = "passed" if not failed else f"FAILED ({', '.join(failed)})"
    print(f"keyvault conformance: {passed}/{len(CHECKS)} checks {status} "
          f"(azure-keyvault-secrets + azure-keyvault-certificates + azure-identity against keyfleet-testkit keyvault)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
