#!/usr/bin/env python3
"""A whole sandbox/container cycle on a CRI socket with Python's grpcio.

A CRI client that nobody in this project wrote: grpc-c underneath, with its
own HTTP/2 stack and its own idea of the `:authority` of a unix socket. Run by
tests/tests/cri_python.rs against a real kedge-agent.

    cri_cycle.py --socket /run/kedge/cri.sock --proto .../k8s-cri-0.11.0/proto/v1.proto \
        --image kedge.local/busybox:latest

The stubs are generated from the CRI's own v1.proto with grpcio-tools into a
temporary folder, so they match the proto the agent is built from. Every
answer is checked; the first wrong one ends the script with an assertion
error and a non-zero exit. The last line on success is `cri cycle ok`.
"""

import argparse
import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

TIMEOUT = 60  # seconds per call: creating a container unpacks its image


def stubs(proto, out):
    """Generates v1_pb2 / v1_pb2_grpc from `proto` into `out` and imports them."""
    include = os.path.dirname(os.path.abspath(proto))
    grpc_include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        ["protoc", f"-I{include}", f"-I{grpc_include}", f"--python_out={out}", f"--grpc_python_out={out}", proto]
    )
    assert rc == 0, f"protoc failed on {proto} ({rc})"
    sys.path.insert(0, out)
    name = os.path.splitext(os.path.basename(proto))[0]
    return importlib.import_module(f"{name}_pb2"), importlib.import_module(f"{name}_pb2_grpc")


def step(what):
    print(f"-- {what}", flush=True)


def cycle(pb, rpc, channel, image):
    rt = rpc.RuntimeServiceStub(channel)
    img = rpc.ImageServiceStub(channel)

    step("Version")
    v = rt.Version(pb.VersionRequest(version="v1"), timeout=TIMEOUT)
    assert (v.runtime_name, v.runtime_api_version) == ("kedge", "v1"), v

    step("ImageStatus")
    st = img.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image)), timeout=TIMEOUT)
    assert st.HasField("image"), f"{image} is not in the runtime's store"
    assert image in st.image.repo_tags and st.image.id.startswith("sha256:"), st.image

    step("RunPodSandbox")
    name = f"py-{os.getpid()}"
    logs = tempfile.mkdtemp(prefix="kedge-py-logs-")
    sandbox_config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="python", attempt=0),
        hostname=name,
        log_directory=logs,
        labels={"app": name},
    )
    sandbox = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=sandbox_config), timeout=TIMEOUT).pod_sandbox_id
    assert sandbox, "no sandbox id"

    step("CreateContainer")
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="main", attempt=0),
        image=pb.ImageSpec(image=image),
        command=["sleep", "3600"],
        log_path="main/0.log",
        labels={"app": name},
    )
    created = rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=sandbox, config=config, sandbox_config=sandbox_config),
        timeout=TIMEOUT,
    )
    cid = created.container_id
    assert cid, "no container id"

    step("StartContainer")
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=TIMEOUT)

    step("ContainerStatus")
    status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=TIMEOUT).status
    assert status.state == pb.CONTAINER_RUNNING, status
    assert status.metadata.name == "main" and status.started_at > 0 and "sha256:" in status.image_ref, status

    step("ListContainers")
    running = pb.ContainerFilter(pod_sandbox_id=sandbox, state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))
    listed = rt.ListContainers(pb.ListContainersRequest(filter=running), timeout=TIMEOUT).containers
    assert [c.id for c in listed] == [cid], listed

    step("ExecSync")
    out = rt.ExecSync(
        pb.ExecSyncRequest(
            container_id=cid,
            cmd=["sh", "-c", "echo hello from grpcio; hostname; head -c 65536 /dev/zero > /blob; echo oops >&2; exit 3"],
            timeout=10,
        ),
        timeout=TIMEOUT,
    )
    assert (out.stdout, out.stderr, out.exit_code) == (f"hello from grpcio\n{name}\n".encode(), b"oops\n", 3), out

    step("ContainerStats")
    stats = rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=TIMEOUT).stats
    assert stats.attributes.id == cid and stats.attributes.metadata.name == "main", stats.attributes
    assert stats.cpu.timestamp > 0 and stats.cpu.usage_core_nano_seconds.value > 0, stats.cpu
    assert stats.cpu.HasField("usage_nano_cores"), stats.cpu
    # sleep and the exec'd shell have touched some memory; far less than a GiB.
    assert stats.memory.timestamp > 0 and 0 < stats.memory.working_set_bytes.value < 1 << 30, stats.memory
    assert stats.memory.usage_bytes.value >= stats.memory.working_set_bytes.value, stats.memory
    # /blob (64 KiB) went to the writable layer.
    assert stats.writable_layer.used_bytes.value >= 65536 and stats.writable_layer.inodes_used.value > 0, stats
    print(
        f"   cpu {stats.cpu.usage_core_nano_seconds.value} ns ({stats.cpu.usage_nano_cores.value} nanocores), "
        f"working set {stats.memory.working_set_bytes.value} B, "
        f"writable layer {stats.writable_layer.used_bytes.value} B in {stats.writable_layer.inodes_used.value} inodes",
        flush=True,
    )

    step("ListContainerStats")
    listed = rt.ListContainerStats(
        pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(label_selector={"app": name})), timeout=TIMEOUT
    ).stats
    assert [s.attributes.id for s in listed] == [cid], listed
    assert listed[0].cpu.usage_core_nano_seconds.value >= stats.cpu.usage_core_nano_seconds.value, listed[0].cpu
    assert listed[0].cpu.timestamp > stats.cpu.timestamp, listed[0].cpu

    step("PodSandboxStats")
    pod = rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=sandbox), timeout=TIMEOUT).stats
    assert pod.attributes.id == sandbox and pod.attributes.metadata.name == name, pod.attributes
    # The pod's cgroup holds its container's: at least as much CPU time as it.
    assert pod.linux.cpu.usage_core_nano_seconds.value >= stats.cpu.usage_core_nano_seconds.value, pod.linux.cpu
    assert pod.linux.memory.working_set_bytes.value > 0, pod.linux.memory
    assert pod.linux.process.process_count.value >= 1, pod.linux.process
    assert [c.attributes.id for c in pod.linux.containers] == [cid], pod.linux.containers
    pods = rt.ListPodSandboxStats(
        pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(id=sandbox)), timeout=TIMEOUT
    ).stats
    assert [p.attributes.id for p in pods] == [sandbox], pods

    step("StopContainer")
    # busybox's sleep ignores SIGTERM: killed once the one-second grace is over.
    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1), timeout=TIMEOUT)
    status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=TIMEOUT).status
    assert (status.state, status.exit_code) == (pb.CONTAINER_EXITED, 137), status
    listed = rt.ListContainerStats(pb.ListContainerStatsRequest(), timeout=TIMEOUT).stats
    assert cid not in [s.attributes.id for s in listed], "an exited container has no stats in the list"

    step("RemoveContainer")
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=TIMEOUT)
    try:
        rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=TIMEOUT)
        raise AssertionError("a removed container still has a status")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e

    step("StopPodSandbox")
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox), timeout=TIMEOUT)
    sb = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox), timeout=TIMEOUT).status
    assert sb.state == pb.SANDBOX_NOTREADY, sb

    step("RemovePodSandbox")
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox), timeout=TIMEOUT)
    left = rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(id=sandbox)), timeout=TIMEOUT).items
    assert not left, left


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", required=True, help="the CRI socket")
    ap.add_argument("--proto", required=True, help="the CRI's v1.proto (runtime.v1)")
    ap.add_argument("--image", required=True, help="an image the runtime already has")
    args = ap.parse_args()
    print(f"grpcio {grpc.__version__}", flush=True)
    pb, rpc = stubs(args.proto, tempfile.mkdtemp(prefix="kedge-cri-stubs-"))
    target = f"unix:{os.path.abspath(args.socket)}"

    # grpc-c's own default authority for a unix socket (the percent-encoded
    # path since grpc 1.57), then what grpc-java sends (the raw path), then
    # a plain host name: the server must take each.
    for authority in (None, os.path.abspath(args.socket), "localhost"):
        options = [] if authority is None else [("grpc.default_authority", authority)]
        with grpc.insecure_channel(target, options=options) as channel:
            v = rpc.RuntimeServiceStub(channel).Version(pb.VersionRequest(version="v1"), timeout=TIMEOUT)
            assert v.runtime_name == "kedge", v
            print(f"-- Version with authority {authority or 'default'}: ok", flush=True)

    with grpc.insecure_channel(target) as channel:
        cycle(pb, rpc, channel, args.image)
    print("cri cycle ok", flush=True)


if __name__ == "__main__":
    main()
