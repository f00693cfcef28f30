"""Drives kedge's API with the official Python client (kubernetes 32), a
client nobody here wrote: pods/log, pods/exec (WebSocket v4.channel.k8s.io)
and pods/portforward (the kubelet's older WebSocket port-forward protocol).

Usage: k8s_client.py KUBECONFIG logs|exec|portforward POD
Prints what the client got (exec: JSON with stdout, stderr and the code).
"""
import json
import sys

from kubernetes import client, config
from kubernetes.stream import portforward, stream


def main():
    kubeconfig, what, pod = sys.argv[1:4]
    config.load_kube_config(kubeconfig)
    v1 = client.CoreV1Api()
    if what == "logs":
        print(v1.read_namespaced_pod_log(pod, "default", tail_lines=1), end="")
    elif what == "exec":
        ws = stream(
            v1.connect_get_namespaced_pod_exec,
            pod,
            "default",
            command=["sh", "-c", 'read line; echo "got $line"; echo oops >&2; exit 4'],
            stdin=True,
            stdout=True,
            stderr=True,
            tty=False,
            _preload_content=False,
        )
        ws.write_stdin("hello\n")
        ws.run_forever(timeout=30)
        print(json.dumps({"stdout": ws.read_stdout(), "stderr": ws.read_stderr(), "code": ws.returncode}))
    elif what == "portforward":
        pf = portforward(v1.connect_get_namespaced_pod_portforward, pod, "default", ports="8080")
        s = pf.socket(8080)
        s.setblocking(True)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
        s.close()
        print(data.decode().split("\r\n\r\n", 1)[1], end="")
    else:
        sys.exit("unknown request " + what)


if __name__ == "__main__":
    main()
