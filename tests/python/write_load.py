"""A write load from the official Python client: creates ConfigMaps in
`default` one after another, as fast as the API answers, and prints each one
the API acknowledged (name, uid, resourceVersion) the moment it did. Stops at
the first failure (the API went away).

    python3 write_load.py KUBECONFIG
"""
import sys

from kubernetes import client, config

config.load_kube_config(sys.argv[1])
conf = client.Configuration.get_default_copy()
conf.retries = False  # a create is sent once: no retry can hide a loss
api = client.CoreV1Api(client.ApiClient(conf))
i = 0
while True:
    name = f"load-{i}"
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"i": str(i)})
    try:
        cm = api.create_namespaced_config_map("default", body)
    except Exception as e:  # noqa: BLE001 - any failure ends the load
        print(f"write_load: stopped at {name}: {type(e).__name__}", file=sys.stderr)
        break
    print(name, cm.metadata.uid, cm.metadata.resource_version, flush=True)
    i += 1
