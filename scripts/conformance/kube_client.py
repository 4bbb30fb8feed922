"""The official Python `kubernetes` client against keyfleet's fake Kubernetes API.

Usage: kube_client.py KUBECONFIG HISTORY
HISTORY is the server's --watch-history (to push a resourceVersion out of the window).
Prints one line per check and `python: N passed, M failed`; exits non-zero on any failure.
"""

import datetime
import sys
import traceback

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

KUBECONFIG, HISTORY = sys.argv[1], int(sys.argv[2])
NS = "default"
config.load_kube_config(config_file=KUBECONFIG)
v1 = client.CoreV1Api()
ev1 = client.EventsV1Api()
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


EVENTS_NS = "py-events"


def agent_event(name, reason, event_type, note):
    """An Event as the agent posts it (agent/src/kube/events.rs)."""
    return client.EventsV1Event(
        metadata=client.V1ObjectMeta(name=name, namespace=EVENTS_NS),
        event_time=datetime.datetime.now(datetime.timezone.utc),
        reporting_controller="keyfleet.io/agent",
        reporting_instance="keyfleet-agent-0",
        action="Apply",
        reason=reason,
        type=event_type,
        note=note,
        regarding=client.V1ObjectReference(api_version="v1", kind="Secret", namespace=EVENTS_NS, name="py-managed"),
    )


@check("label selector finds the Secrets of one fleet secret (keyfleet.io/fleet-secret)")
def _():
    v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=EVENTS_NS)))
    labels = {"app.kubernetes.io/managed-by": "keyfleet", "keyfleet.io/fleet-secret": "py-managed"}
    annotations = {"keyfleet.io/synced-at": "2026-03-01T12:00:00Z", "keyfleet.io/key-vault-versions": '{"pw":"0123abcd"}'}
    v1.create_namespaced_secret(
        EVENTS_NS,
        client.V1Secret(metadata=client.V1ObjectMeta(name="py-managed", labels=labels, annotations=annotations), string_data={"pw": "x"}),
    )
    v1.create_namespaced_secret(EVENTS_NS, client.V1Secret(metadata=client.V1ObjectMeta(name="py-other"), string_data={"k": "v"}))
    found = v1.list_namespaced_secret(EVENTS_NS, label_selector="keyfleet.io/fleet-secret=py-managed").items
    assert [s.metadata.name for s in found] == ["py-managed"], found
    assert found[0].metadata.annotations == annotations, found[0].metadata.annotations
    everywhere = v1.list_secret_for_all_namespaces(label_selector="keyfleet.io/fleet-secret=py-managed").items
    assert [(s.metadata.namespace, s.metadata.name) for s in everywhere] == [(EVENTS_NS, "py-managed")], everywhere
    assert v1.list_namespaced_secret(EVENTS_NS, label_selector="keyfleet.io/fleet-secret=nope").items == []


@check("EventsV1Api: create, 409 on a duplicate, list, series patch, immutable note (422)")
def _():
    created = ev1.create_namespaced_event(EVENTS_NS, agent_event("py-managed.a1", "Applied", "Normal", "applied revision 3"))
    assert created.metadata.uid and created.metadata.resource_version, created.metadata
    assert created.regarding.name == "py-managed" and created.reporting_controller == "keyfleet.io/agent"
    expect_status(lambda: ev1.create_namespaced_event(EVENTS_NS, agent_event("py-managed.a1", "Applied", "Normal", "x")), 409)
    ev1.create_namespaced_event(EVENTS_NS, agent_event("py-managed.d1", "DriftRepaired", "Normal", "repaired drift"))
    ev1.create_namespaced_event(EVENTS_NS, agent_event("py-managed.f1", "ApplyFailed", "Warning", "refused"))
    listed = ev1.list_namespaced_event(EVENTS_NS)
    assert sorted(e.reason for e in listed.items) == ["Applied", "ApplyFailed", "DriftRepaired"], listed.items
    assert all(e.regarding.kind == "Secret" and e.regarding.name == "py-managed" for e in listed.items)
    now = datetime.datetime.now(datetime.timezone.utc)
    patched = ev1.patch_namespaced_event(
        "py-managed.d1", EVENTS_NS, {"series": {"count": 3, "lastObservedTime": now.isoformat().replace("+00:00", "Z")}}
    )
    assert patched.series.count == 3, patched.series
    error = expect_status(lambda: ev1.patch_namespaced_event("py-managed.d1", EVENTS_NS, {"note": "changed"}), 422)
    assert "immutable" in error.body, error.body
    everywhere = ev1.list_event_for_all_namespaces(field_selector="regarding.name=py-managed")
    assert len(everywhere.items) == 3, everywhere.items


@check("CoreV1Api reads the same Events: list, field selectors, read")
def _():
    core = v1.list_namespaced_event(EVENTS_NS)
    assert sorted(e.reason for e in core.items) == ["Applied", "ApplyFailed", "DriftRepaired"], core.items
    for event in core.items:
        assert event.involved_object.kind == "Secret" and event.involved_object.name == "py-managed", event
        assert event.reporting_component == "keyfleet.io/agent" and event.message, event
    series = [e for e in core.items if e.reason == "DriftRepaired"][0]
    assert series.series.count == 3, series.series
    warnings = v1.list_namespaced_event(
        EVENTS_NS, field_selector="involvedObject.kind=Secret,involvedObject.name=py-managed,type=Warning"
    ).items
    assert [e.metadata.name for e in warnings] == ["py-managed.f1"], warnings
    assert v1.read_namespaced_event("py-managed.a1", EVENTS_NS).message == "applied revision 3"
    applied = v1.list_event_for_all_namespaces(field_selector=f"reason=Applied,involvedObject.namespace={EVENTS_NS}").items
    assert [e.metadata.name for e in applied] == ["py-managed.a1"], applied
    expect_status(lambda: v1.list_namespaced_event(EVENTS_NS, field_selector="spec.bogus=1"), 400)


@check("delete, then read is 404 NotFound")
def _():
    # This client version returns the Status as a plain dict.
    status = v1.delete_namespaced_secret("py-1", NS)
    assert status["kind"] == "Status" and status["status"] == "Success", status
    error = expect_status(lambda: v1.read_namespaced_secret("py-1", NS), 404)
    assert '"NotFound"' in error.body, error.body


print(f"python: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
