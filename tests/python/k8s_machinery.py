"""Drives kedge's API machinery with the official Python client (kubernetes
32), a client nobody here wrote.

Usage: k8s_machinery.py KUBECONFIG rbac TOKEN
  Acts as the holder of TOKEN (a ServiceAccount token): lists pods in
  `default` and tries to list configmaps there. Prints JSON: the pod
  count, and the HTTP status and reason of the configmap list.
"""
import json
import sys

from kubernetes import client, config


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
    else:
        sys.exit(f"unknown command {what}")


if __name__ == "__main__":
    main()
