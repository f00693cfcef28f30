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
"""
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
    else:
        sys.exit(f"unknown command {what}")


if __name__ == "__main__":
    main()
