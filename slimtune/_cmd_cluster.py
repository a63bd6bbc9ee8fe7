"""``slimtune cluster up|down``, ``submit``, ``status``, ``logs``, ``stop`` and ``list``."""

from __future__ import annotations

import argparse
import json
import sys

from slimtune._command import Command

ADDRESS_HELP = ("Ray dashboard address, e.g. http://127.0.0.1:8265 (default: where the sweep was submitted, "
                "else RAY_ADDRESS, else the cluster `slimtune cluster up` started)")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="start a cluster: local Ray nodes, or Ray's cluster launcher with a YAML file",
                        description="Without CONFIG: a local head node (and --workers worker nodes) on this "
                                    "machine, each a `ray start --block` process; token auth on, dashboard on "
                                    "--dashboard-host. With CONFIG: `ray up -y CONFIG`.")
    up.add_argument("config", nargs="?", help="cluster launcher YAML (cluster/aws.yaml, cluster/gcp.yaml, ...)")
    up.add_argument("--workers", type=int, default=0, help="local worker nodes to add on this machine (try-out)")
    up.add_argument("--num-cpus", type=int, default=None, help="CPUs each local node offers (default: all)")
    up.add_argument("--num-gpus", type=int, default=None, help="GPUs each local node offers (default: detected)")
    up.add_argument("--port", type=int, default=None, help="head (GCS) port; default 6379 if free, 0 any free port")
    up.add_argument("--dashboard-port", type=int, default=None,
                    help="dashboard / Jobs API port; default 8265 if free, 0 any free port")
    up.add_argument("--dashboard-host", default="127.0.0.1",
                    help="interface the dashboard binds to (default loopback; 0.0.0.0 exposes the Jobs API, "
                         "which runs code, to the network: token auth protects it)")
    up.add_argument("--node-ip-address", default="127.0.0.1", help="IP address of the local nodes")
    up.add_argument("--object-store-memory", type=int, default=None, help="object store bytes per node")
    up.add_argument("--storage", default=None,
                    help="where sweeps on this cluster go, recorded for `submit`: s3://bucket/prefix or "
                         "gs://bucket/prefix (nodes use their own credentials), or a folder every node sees "
                         "(default for local nodes: $SLIMTUNE_HOME/storage)")
    sub.add_parser("down", help="stop the cluster `cluster up` started",
                   description="Terminates the recorded node processes (or runs `ray down -y CONFIG`).")


def _cluster(args: argparse.Namespace) -> int:
    from slimtune import cluster

    if args.action == "down":
        rec = cluster.down()
        if rec is None:
            print("no cluster recorded")
        elif rec.get("kind") == "launcher":
            print(f"ray down {rec['config']}: done")
        else:
            print(f"stopped {rec['stopped']} node process(es) of {rec['dashboard']}; Ray logs in {rec['temp_dir']}")
        return 0
    from slimtune.spaces import SpecError

    if args.workers < 0:
        raise SpecError("--workers", "must be >= 0", args.workers)
    if args.config:
        rec = cluster.up(args.config, storage=args.storage)
        print(f"cluster launched from {rec['config']}\n"
              f"  forward its dashboard:  ray dashboard {rec['config']}   (then http://127.0.0.1:8265)\n"
              + (f"  results:                {rec['storage']}\n"
                 f"  submit:                 slimtune submit SPEC\n" if rec.get("storage") else
                 "  submit:                 slimtune submit SPEC --storage s3://bucket/sweeps\n") +
              "  stop:                   slimtune cluster down")
        return 0
    rec = cluster.up(workers=args.workers, num_cpus=args.num_cpus, num_gpus=args.num_gpus, port=args.port,
                     dashboard_port=args.dashboard_port, dashboard_host=args.dashboard_host,
                     node_ip=args.node_ip_address, object_store_memory=args.object_store_memory,
                     storage=args.storage)
    token = rec["token"].get("path") or rec["token"]["source"]
    print(f"head {rec['gcs_address']} (pid {rec['head']['pid']}), {len(rec['workers'])} worker node(s)\n"
          f"  dashboard / Jobs API:   {rec['dashboard']}   (token auth on; token: {token})\n"
          f"  results:                {rec['storage']}\n"
          f"  submit:                 slimtune submit examples/digits.yaml\n"
          f"  stop:                   slimtune cluster down")
    return 0


def _submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="YAML spec file")
    p.add_argument("--address", default=None, help="Ray dashboard address (default: RAY_ADDRESS, else the "
                                                   "cluster `slimtune cluster up` started)")
    p.add_argument("--storage", default=None, help="s3://bucket/prefix, gs://bucket/prefix, or a folder every "
                                                   "node and this client can read; the sweep writes to "
                                                   "STORAGE/<sweep-id> (default: the storage `cluster up` recorded)")
    p.add_argument("--working-dir", default=None, help="folder shipped to the cluster with the job "
                                                       "(default: the spec's folder); must contain the spec")


def _submit(args: argparse.Namespace) -> int:
    from slimtune import cluster

    rec = cluster.submit(args.spec, address=args.address, storage=args.storage, working_dir=args.working_dir)
    print(rec["id"], flush=True)
    print(f"submitted to {rec['address']}; results in {rec['out']}\n"
          f"  slimtune status {rec['id']}   slimtune logs {rec['id']} --follow   slimtune results {rec['id']}",
          file=sys.stderr)
    return 0


def _id_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="sweep id (printed by `slimtune submit`)")
    p.add_argument("--address", default=None, help=ADDRESS_HELP)


def _progress_text(p) -> str:
    from slimtune.search import format_progress

    return "\n".join(format_progress(p)) if p else "no results yet"


def _short(p) -> str:
    from slimtune.search.driver.progress import counts

    return f"{p.finished}/{p.budget} trained ({counts(p)})" if p else "no results yet"


def _status(args: argparse.Namespace) -> int:
    from slimtune import cluster

    st = cluster.status(args.id, address=args.address)
    print(f"{st['id']}: {st['status']}")
    print(_progress_text(st["progress"]))
    if st["status"] == "FAILED" and st["message"]:
        print(f"message: {' '.join(str(st['message']).split())}")
    print(f"results: {st['out']}")
    return 1 if st["status"] == "FAILED" else 0


def _logs_args(p: argparse.ArgumentParser) -> None:
    _id_args(p)
    p.add_argument("--follow", "-f", action="store_true", help="stream new output until the sweep ends")


def _logs(args: argparse.Namespace) -> int:
    from slimtune import cluster

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    cluster.logs(args.id, address=args.address, follow=args.follow, write=write)
    return 0


def _stop(args: argparse.Namespace) -> int:
    from slimtune import cluster

    st = cluster.stop(args.id, address=args.address)
    print(f"{st['id']}: {st['status']}; trials {_short(st['progress'])}")
    if st["progress"]:
        print(f"finished trials stay readable: slimtune results {st['id']}")
    return 0


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help=ADDRESS_HELP)
    p.add_argument("--format", choices=("table", "json"), default="table")


def _list(args: argparse.Namespace) -> int:
    from slimtune import cluster

    rows = cluster.list_sweeps(address=args.address)
    if args.format == "json":
        from dataclasses import asdict

        plain = [{**r, "progress": asdict(r["progress"]) if r["progress"] else None} for r in rows]
        sys.stdout.write(json.dumps(plain, indent=2) + "\n")
        return 0
    if not rows:
        print("(no sweeps)")
        return 0
    table = [("id", "status", "trials", "started")] + [
        (r["id"], r["status"], _short(r["progress"]), r["started"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


COMMANDS = [
    Command("cluster", "start or stop a Ray cluster (local nodes, or Ray's cluster launcher)",
            "examples:\n  slimtune cluster up                      # local head, dashboard on 127.0.0.1\n"
            "  slimtune cluster up --workers 1 --num-cpus 1\n  slimtune cluster up cluster/aws.yaml\n"
            "  slimtune cluster down", _cluster_args, _cluster),
    Command("submit", "run a sweep on a Ray cluster as a Ray job; prints its sweep id and returns",
            "examples:\n  slimtune submit examples/digits.yaml\n"
            "  slimtune submit examples/digits.yaml --address http://127.0.0.1:8265 --storage s3://bucket/sweeps",
            _submit_args, _submit),
    Command("status", "a submitted sweep's job status and trial counts", "example: slimtune status ID",
            _id_args, _status),
    Command("logs", "a submitted sweep's driver output", "example: slimtune logs ID --follow", _logs_args, _logs),
    Command("stop", "stop a submitted sweep (finished trials stay readable)", "example: slimtune stop ID",
            _id_args, _stop),
    Command("list", "the sweeps a cluster knows", "example: slimtune list --address http://127.0.0.1:8265",
            _list_args, _list),
]
