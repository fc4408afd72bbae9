"""`python -m raytf.pool [--warm N]`: start (or resize) the warm pool of the cluster this process
reaches as a Ray driver (RAY_ADDRESS, or the head it runs on: a Ray job on a KubeRay cluster)."""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m raytf.pool", description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=None, help="processes per node (default: the node's CPUs + 1; 0: none)")
    parser.add_argument("--wait", action="store_true", help="wait until every process has TensorFlow imported")
    args = parser.parse_args()
    if args.warm is not None and args.warm < 0:
        parser.error("--warm takes 0 or more")
    import ray

    from raytf.pool.start import ensure_pool, wait_until_warm

    ray.init()
    size = ensure_pool(args.warm)
    print(f"raytf pool: {size.started + size.kept} processes on {size.nodes} node(s) ({size.started} started, "
          f"{size.stopped} stopped)")
    if args.wait:
        print(f"raytf pool: {wait_until_warm()} processes warm")


if __name__ == "__main__":
    main()
