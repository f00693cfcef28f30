"""Drives kedge's API machinery with the official Python client (kubernetes
32), a client nobody here wrote.

Usage: k8s_machinery.py KUBECONFIG rbac TOKEN
  Acts as the holder of TOKEN (a ServiceAccount token): lists pods in
  `default` and tries to list configmaps there. Prints JSON: the pod
  count, and the HTTP status and reason of the configmap list.
Usage: k8s_machinery.py KUBECONFIG ssa NAME
  Server-side applies ConfigMap NAME with the dynamic client as manager
  `python`, again unchanged, then as `other` with a changed value (a
  conflict), then forced. Prints JSON: the resourceVersions of the first
  two applies, the conflict's status and message, and the managers after.
Usage: k8s_machinery.py KUBECONFIG crd FILE
  Creates the CustomResourceDefinition in FILE (YAML) with the typed
  apiextensions client and waits for it to be established; then, with the
  custom objects client, creates a valid Widget and an invalid one, patches
  the first (merge patch) and its status, watches the change, lists, and
  deletes the definition. Prints JSON: the CRD's conditions, the invalid
  one's status and message, the watch's events, the listed names and
  sizes, and the status code of a list once the definition is gone.
"""
import time
import json
import sys

from kubernetes import client, config, dynamic


def as_token(kubeconfig, token):
    """The kubeconfig's server and CA, with TOKEN instead of its credentials."""
    base = client.Configuration()
    config.load_kube_config(kubeconfig, client_configuration=base)
    c = client.Configuration()
    c.host = base.host
    c.ssl_ca_cert = base.ssl_ca_cert
    c.api_key = {"authorization": token}
    c.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(c)


def main():
    kubeconfig, what = sys.argv[1:3]
    if what == "rbac":
        v1 = client.CoreV1Api(as_token(kubeconfig, sys.argv[3]))
        pods = v1.list_namespaced_pod("default")
        try:
            v1.list_namespaced_config_map("default")
            refused = {"status": 200}
        except client.ApiException as e:
            refused = {"status": e.status, "reason": e.reason, "message": json.loads(e.body)["message"]}
        print(json.dumps({"pods": len(pods.items), "configmaps": refused}))
    elif what == "ssa":
        name = sys.argv[3]
        dyn = dynamic.DynamicClient(config.new_client_from_config(kubeconfig))
        cms = dyn.resources.get(api_version="v1", kind="ConfigMap")

        def body(value):
            return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"key": value}}

        first = cms.server_side_apply(body=body("1"), namespace="default", field_manager="python")
        second = cms.server_side_apply(body=body("1"), namespace="default", field_manager="python")
        try:
            cms.server_side_apply(body=body("2"), namespace="default", field_manager="other")
            conflict = {"status": 200}
        except client.ApiException as e:
            conflict = {"status": e.status, "message": json.loads(e.body)["message"]}
        forced = cms.server_side_apply(body=body("2"), namespace="default", field_manager="other", force_conflicts=True)
        forced = forced.to_dict()
        managers = {m["manager"]: m["fieldsV1"] for m in forced["metadata"]["managedFields"]}
        print(json.dumps({
            "rv": [first.metadata.resourceVersion, second.metadata.resourceVersion],
            "conflict": conflict,
            "value": forced["data"]["key"],
            "managers": managers,
        }))
    elif what == "crd":
        print(json.dumps(crd(kubeconfig, sys.argv[3])))
    else:
        sys.exit(f"unknown command {what}")


def crd(kubeconfig, path):
    import yaml
    from kubernetes import watch

    api = config.new_client_from_config(kubeconfig)
    ext = client.ApiextensionsV1Api(api)
    custom = client.CustomObjectsApi(api)
    with open(path) as f:
        definition = yaml.safe_load(f)
    ext.create_custom_resource_definition(definition)
    name = definition["metadata"]["name"]
    deadline = time.time() + 20
    while True:
        got = ext.read_custom_resource_definition(name)
        conditions = {c.type: c.status for c in got.status.conditions or []}
        if conditions.get("Established") == "True" or time.time() > deadline:
            break
        time.sleep(0.2)
    out = {"conditions": conditions, "accepted": got.status.accepted_names.kind}
    args = ("example.com", "v1", "default", "widgets")

    def widget(n, spec):
        return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": n}, "spec": spec}

    custom.create_namespaced_custom_object(*args, widget("py1", {"color": "blue"}))
    try:
        custom.create_namespaced_custom_object(*args, widget("py2", {"color": "blue", "size": 99}))
        out["invalid"] = {"status": 201}
    except client.ApiException as e:
        out["invalid"] = {"status": e.status, "message": json.loads(e.body)["message"]}
    start = custom.list_namespaced_custom_object(*args)["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object(*args, "py1", {"spec": {"size": 7}})
    custom.patch_namespaced_custom_object_status(*args, "py1", {"status": {"replicas": 2}})
    events = []
    for ev in watch.Watch().stream(custom.list_namespaced_custom_object, *args, resource_version=start,
                                   timeout_seconds=3):
        events.append([ev["type"], ev["object"]["spec"].get("size"), ev["object"].get("status", {}).get("replicas")])
        if len(events) == 2:
            break
    out["events"] = events
    items = custom.list_namespaced_custom_object(*args)["items"]
    out["listed"] = {i["metadata"]["name"]: i["spec"]["size"] for i in items}
    ext.delete_custom_resource_definition(name)
    deadline = time.time() + 30
    while True:
        try:
            custom.list_namespaced_custom_object(*args)
            gone = 200
        except client.ApiException as e:
            gone = e.status
        if gone == 404 or time.time() > deadline:
            break
        time.sleep(0.2)
    out["after_delete"] = gone
    return out


if __name__ == "__main__":
    main()
