"""The official Python `kubernetes` client against keyfleet's fake Kubernetes API.

Usage: kube_client.py KUBECONFIG HISTORY
HISTORY is the server's --watch-history (to push a resourceVersion out of the window).
Prints one line per check and `python: N passed, M failed`; exits non-zero on any failure.
"""

import sys
import traceback

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

KUBECONFIG, HISTORY = sys.argv[1], int(sys.argv[2])
NS = "default"
config.load_kube_config(config_file=KUBECONFIG)
v1 = client.CoreV1Api()
passed, failed = 0, 0


def check(name):
    def run(fn):
        global passed, failed
        try:
            fn()
            passed += 1
            print(f"ok   python: {name}")
        except Exception:  # noqa: BLE001 - every failure is reported, then counted
            failed += 1
            print(f"FAIL python: {name}")
            traceback.print_exc()
        return fn

    return run


def expect_status(fn, code):
    try:
        fn()
    except ApiException as error:
        assert error.status == code, f"expected {code}, got {error.status}: {error.body}"
        return error
    raise AssertionError(f"expected HTTP {code}, the call succeeded")


def secret_body(name, data):
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


@check("list namespaces")
def _():
    names = [ns.metadata.name for ns in v1.list_namespace().items]
    assert "default" in names, names


@check("create, duplicate create is 409 AlreadyExists")
def _():
    created = v1.create_namespaced_secret(NS, client.V1Secret(metadata=client.V1ObjectMeta(name="py-1"), string_data={"k": "v"}))
    assert created.metadata.resource_version and created.metadata.uid
    assert created.data == {"k": "dg=="}, created.data
    error = expect_status(lambda: v1.create_namespaced_secret(NS, client.V1Secret(metadata=client.V1ObjectMeta(name="py-1"))), 409)
    assert '"AlreadyExists"' in error.body, error.body


@check("server-side apply: create, no-op keeps resourceVersion, managedFields")
def _():
    body = secret_body("py-ssa", {"user": "admin", "password": "one"})
    first = v1.patch_namespaced_secret("py-ssa", NS, body, field_manager="py-agent", _content_type="application/apply-patch+yaml")
    managers = [(m.manager, m.operation) for m in first.metadata.managed_fields]
    assert managers == [("py-agent", "Apply")], managers
    second = v1.patch_namespaced_secret("py-ssa", NS, body, field_manager="py-agent", _content_type="application/apply-patch+yaml")
    assert second.metadata.resource_version == first.metadata.resource_version


@check("server-side apply conflict (409 FieldManagerConflict), then force")
def _():
    body = secret_body("py-ssa", {"user": "admin", "password": "two"})
    error = expect_status(
        lambda: v1.patch_namespaced_secret("py-ssa", NS, body, field_manager="py-other", _content_type="application/apply-patch+yaml"),
        409,
    )
    assert '"FieldManagerConflict"' in error.body and ".stringData.password" in error.body, error.body
    forced = v1.patch_namespaced_secret(
        "py-ssa", NS, body, field_manager="py-other", force=True, _content_type="application/apply-patch+yaml"
    )
    assert forced.data["password"] == "dHdv", forced.data


@check("merge patch and stale replace (409 Conflict)")
def _():
    current = v1.read_namespaced_secret("py-1", NS)
    v1.patch_namespaced_secret("py-1", NS, {"metadata": {"labels": {"tier": "web"}}})
    labelled = v1.list_namespaced_secret(NS, label_selector="tier in (web,db)").items
    assert [s.metadata.name for s in labelled] == ["py-1"], labelled
    current.metadata.labels = {"tier": "stale"}
    error = expect_status(lambda: v1.replace_namespaced_secret("py-1", NS, current), 409)
    assert '"Conflict"' in error.body, error.body


@check("watch from a resourceVersion with bookmarks")
def _():
    start = v1.list_namespaced_secret(NS).metadata.resource_version
    v1.create_namespaced_secret(NS, client.V1Secret(metadata=client.V1ObjectMeta(name="py-watch"), string_data={"k": "v"}))
    seen_added, seen_bookmark = False, False
    w = watch.Watch()
    for event in w.stream(v1.list_namespaced_secret, NS, resource_version=start, allow_watch_bookmarks=True, timeout_seconds=20):
        if event["type"] == "ADDED" and event["object"].metadata.name == "py-watch":
            seen_added = True
        if event["type"] == "BOOKMARK":
            seen_bookmark = True
        if seen_added and seen_bookmark:
            w.stop()
    assert seen_added and seen_bookmark, (seen_added, seen_bookmark)


@check("watch from a resourceVersion older than the history is 410 Expired")
def _():
    old = v1.list_namespaced_secret(NS).metadata.resource_version
    for i in range(HISTORY + 5):
        v1.patch_namespaced_secret("py-watch", NS, {"metadata": {"labels": {"n": str(i)}}})
    w = watch.Watch()
    error = expect_status(lambda: list(w.stream(v1.list_namespaced_secret, NS, resource_version=old, timeout_seconds=5)), 410)
    assert "too old resource version" in str(error.reason) + str(error.body), error


@check("delete, then read is 404 NotFound")
def _():
    # This client version returns the Status as a plain dict.
    status = v1.delete_namespaced_secret("py-1", NS)
    assert status["kind"] == "Status" and status["status"] == "Success", status
    error = expect_status(lambda: v1.read_namespaced_secret("py-1", NS), 404)
    assert '"NotFound"' in error.body, error.body


print(f"python: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
