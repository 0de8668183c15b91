"""``dialguard``: one command for operators, with a subcommand per job.

Every subcommand reads the same ``DIALGUARD_*`` settings (see ``services.settings``) so that a
flag given here and an environment variable in production mean the same thing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from services.settings import Settings

log = logging.getLogger("dialguard")


def _broker_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from services.admin import ensure_topics
    from services.broker import LocalCluster
    from streams.topics import min_insync_replicas

    nodes = args.nodes if args.nodes is not None else settings.broker_nodes
    cluster = LocalCluster(settings, nodes)
    if args.action == "fetch":
        cluster.fetch()
    elif args.action == "start":
        cluster.start()
        if nodes > 1 and settings.topic_replication < min(nodes, 3):
            log.warning("topics get DIALGUARD_TOPIC_REPLICATION=%d cop%s on a %d-node cluster: "
                        "set it to %d so a killed node loses nothing", settings.topic_replication,
                        "y" if settings.topic_replication == 1 else "ies", nodes, min(nodes, 3))
        created = ensure_topics(settings)
        print(f"broker up at {cluster.bootstrap}; topics created (replication "
              f"{settings.topic_replication}, min.insync.replicas "
              f"{min_insync_replicas(settings.topic_replication)}): "
              f"{', '.join(created) or 'none new'}")
        if nodes > 1:
            print(f"clients: DIALGUARD_KAFKA_BOOTSTRAP={cluster.bootstrap}")
    elif args.action == "stop":
        cluster.stop()
    elif args.action == "wipe":
        cluster.wipe()
    else:
        for status in cluster.status():
            for key, value in status.items():
                print(f"{key:>10}: {value}")
            print()
    return 0


def _topics_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from services.admin import ensure_topics
    from streams.topics import CATALOG

    if args.action == "list":
        for spec in CATALOG:
            parts = spec.partition_count(settings.topic_partitions)
            print(f"{spec.name:<26} partitions={parts:<3} cleanup={spec.cleanup_policy:<14} "
                  f"key={spec.key}; value={spec.value}")
        return 0
    created = ensure_topics(settings)
    print(f"topics created: {', '.join(created) or 'none (all exist)'}")
    return 0


def _worker_cmd(args: argparse.Namespace, settings: Settings) -> int:  # noqa: ARG001
    # Faust parses its own argv; hand it a clean one.
    sys.argv = [sys.argv[0], "worker", "-l", args.loglevel]
    from streams.app import DataFolderInUse, main as worker_main

    try:
        worker_main()
    except DataFolderInUse as exc:
        print(f"dialguard worker: {exc}", file=sys.stderr)
        return 1
    return 0


def _simulate_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from services.simulator import run

    return run(args, settings)


def _eval_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from services.evaluate import run

    return run(args, settings)


def _bench_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from services.bench import run

    return run(args, settings)


def _watch_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from services.watch import watch

    return watch(settings, from_beginning=args.from_beginning, limit=args.limit)


def _ingest_cmd(args: argparse.Namespace, settings: Settings) -> int:
    return args.ingest_func(args, settings)


def _switch_adapter_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from services.switch_adapter import run

    return run(args, settings)


def _run_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from services.runner import run_all

    return run_all(settings, simulate=args.simulate, seed=args.seed, scenario=args.scenario)


def _stop_cmd(args: argparse.Namespace, settings: Settings) -> int:  # noqa: ARG001
    from services.runner import stop_all

    return stop_all(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dialguard",
        description="Stop robocall and AI-dialer nuisance traffic from signaling events. "
                    "Settings come from DIALGUARD_* environment variables (README, "
                    "'Configuration'); e.g. DIALGUARD_KAFKA_BOOTSTRAP=host:9092.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("broker", help="the embedded Kafka (KRaft), one node or a local cluster",
                       description="Manage the embedded Apache Kafka broker: jars from Maven "
                                   "Central into .dialguard/kafka/libs, data in "
                                   ".dialguard/kafka/data, log in its run folder. With --nodes N "
                                   "(>1), a local cluster of N broker+controller nodes: node k on "
                                   "DIALGUARD_BROKER_PORT/DIALGUARD_CONTROLLER_PORT + 10*(k-1), "
                                   "data in .dialguard/kafka/cluster-N/node-k; stop, status and "
                                   "wipe act on every node of the cluster of that size.")
    p.add_argument("action", choices=["start", "stop", "status", "wipe", "fetch"],
                   help="start (format on first start, create topics), stop (clean), status, "
                        "wipe (stop and delete data), fetch (download jars only)")
    p.add_argument("--nodes", type=int, default=None, metavar="N",
                   help="nodes of the local cluster (default DIALGUARD_BROKER_NODES, 1); "
                        "give topics copies with DIALGUARD_TOPIC_REPLICATION (3 for N>=3) and "
                        "point clients at every node with DIALGUARD_KAFKA_BOOTSTRAP")
    p.set_defaults(func=_broker_cmd)

    p = sub.add_parser("topics", help="list or create the topic catalog",
                       description="Create every topic of the catalog if missing (idempotent), "
                                   "or list the catalog.")
    p.add_argument("action", choices=["create", "list"], nargs="?", default="create")
    p.set_defaults(func=_topics_cmd)

    p = sub.add_parser("worker", help="run one detection worker (Faust)",
                       description="Consume signaling.events, keep windowed counters per "
                                   "number, score with the online models, publish decisions. "
                                   "Run several with distinct DIALGUARD_WORKER_WEB_PORT, "
                                   "DIALGUARD_METRICS_PORT and DIALGUARD_HOME to scale out.")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warn", "error"])
    p.set_defaults(func=_worker_cmd)

    p = sub.add_parser("simulate", help="produce realistic signaling with ground truth",
                       description="Simulate subscribers, robocallers, scanners, snowshoe "
                                   "pools, spoofers, rotating-number, neighbour-spoofing and "
                                   "number-pool campaigns, call centers, a company PBX, a "
                                   "bank OTP service, an interconnect trunk and emergency "
                                   "calls; write ground truth for evaluation (per number, and "
                                   "per call with --call-truth).")
    from services.simulator import add_arguments

    add_arguments(p)
    p.set_defaults(func=_simulate_cmd)

    p = sub.add_parser("eval", help="detection quality against the simulator's ground truth",
                       description="Simulate scenario sets (several seeds, hard mixes), run "
                                   "the detector on them and print, per call in event time, "
                                   "the calls stopped per population and campaign (robots: "
                                   "after 10 minutes, time to first stop; legitimate: against "
                                   "the 0.01 % target; emergency), decisions per scope, and "
                                   "per number precision, recall, false-positive rate, calls "
                                   "leaked and time to block; write a PNG plot.")
    from services.evaluate import add_arguments as add_eval_arguments

    add_eval_arguments(p)
    p.set_defaults(func=_eval_cmd)

    p = sub.add_parser("bench", help="speed and memory figures against a real local broker",
                       description="Start a broker of its own and print: the bare "
                                   "consume+decode ceiling, the worker's end-to-end events/s, "
                                   "decision latency p50/p99 at half the peak, bytes of state "
                                   "per number and peak RSS with many distinct callers.")
    from services.bench import add_arguments as add_bench_arguments

    add_bench_arguments(p)
    p.set_defaults(func=_bench_cmd)

    p = sub.add_parser("watch", help="print decisions as they are published",
                       description="Tail switch.control.decisions and print one line each.")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest decision")
    p.add_argument("--limit", type=int, default=0, help="stop after this many (0 = never)")
    p.set_defaults(func=_watch_cmd)

    # Control plane: `api` serves it; policy, allow, feedback, ... are its HTTP clients.
    from services.control_cli import register as register_control

    register_control(sub)

    p = sub.add_parser("ingest", help="feed real signaling into signaling.events",
                       description="Turn signaling from switches and probes (HEPv3 from "
                                   "Kamailio/OpenSIPS siptrace, SIP pcap, ISUP probe records "
                                   "and pcap, CDR files) into events on signaling.events; what "
                                   "cannot be turned into an event goes to "
                                   "signaling.events.dlq with the reason.")
    from services.ingest.cli import add_arguments as add_ingest_arguments

    add_ingest_arguments(p)
    p.set_defaults(func=_ingest_cmd)

    p = sub.add_parser("switch-adapter", help="apply decisions to a Kamailio switch, ack them",
                       description="Consume switch.control.decisions and apply them to "
                                   "Kamailio's htables over JSON-RPC (DIALGUARD_KAMAILIO_RPC_URL): "
                                   "block -> htable 'blocked' with the remaining TTL as expiry, "
                                   "rate_limit -> htable 'ratelimit', unblock -> both removed; "
                                   "labels and dry runs are never applied. On start it rebuilds "
                                   "the switch's entries from the compacted topic. Publishes an "
                                   "ack per decision to switch.control.acks; metrics on "
                                   "DIALGUARD_ADAPTER_METRICS_PORT. One per switch "
                                   "(DIALGUARD_SWITCH_NAME); see README 'The Kamailio switch'.")
    from services.switch_adapter import add_arguments as add_adapter_arguments

    add_adapter_arguments(p)
    p.set_defaults(func=_switch_adapter_cmd)

    p = sub.add_parser("run", help="start everything on the embedded default (make run)",
                       description="Start what is not running: broker, topics, default "
                                   "policy, worker, control API and analyst console, HEPv3 "
                                   "collector, Kamailio with the switch adapter (log-only "
                                   "when Kamailio cannot start, and it says so) and the "
                                   "simulator. Prints decisions as they are published; "
                                   "Ctrl-C or SIGTERM stops exactly what it started. Child "
                                   "logs and pids are in DIALGUARD_HOME/run/.")
    p.add_argument("--no-simulate", dest="simulate", action="store_false",
                   help="start everything but the simulator (real traffic from others)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed")
    p.add_argument("--scenario", default="default", help="simulator scenario")
    p.set_defaults(func=_run_cmd)

    p = sub.add_parser("stop", help="stop whatever 'dialguard run' left running")
    p.set_defaults(func=_stop_cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"dialguard: {exc}", file=sys.stderr)
        return 2
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - operators get one line, -v gets the trace
        if args.verbose:
            raise
        print(f"dialguard {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
