"""The `raytf` command line: thin commands that parse, call the library and print.

Errors the user can fix (`RaytfError`) print one paragraph and exit with status 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import time
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raytf.errors import ClusterError, Interrupted, RaytfError

app = typer.Typer(
    name="raytf",
    help="TensorFlow data-parallel training with parameter servers on Ray: on this machine or on Kubernetes (KubeRay).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
_debug = {"on": bool(os.environ.get("RAYTF_DEBUG"))}


def command(fn: Callable) -> Callable:
    """Turn raytf's errors into one paragraph and exit status 2 (or a traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RaytfError as error:
            if _debug["on"]:
                raise
            err.print(f"[bold red]Error:[/] {escape(error.problem)}", soft_wrap=True)  # plain text: may contain [...]
            if error.fix:
                err.print(f"[bold]Fix:[/] {escape(error.fix.strip())}", soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("Interrupted; actors were released.")
            raise typer.Exit(130) from None

    return wrapper


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-paragraph errors (and, "
                               "like train --verbose, TensorFlow's and Ray's own logs)."),
) -> None:
    if debug:
        _debug["on"] = True
        _show_native_logs()


def _show_native_logs() -> None:
    """Let TensorFlow's native logs through, here and in every actor of the run (`raytf.observe.native_logs`)."""
    from raytf.observe.native_logs import VERBOSE_ENV

    os.environ[VERBOSE_ENV] = "1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


# -- cluster lifecycle -------------------------------------------------------------------------

# Options shared by the commands that act on a cluster (one definition, one help text).
SPEC_OF_CLUSTER = typer.Option(None, "--cluster", "-c", help="KubeRay: act on this spec's cluster instead of the remembered one.")
KUBECONFIG = typer.Option(None, "--kubeconfig", help="KubeRay: kubeconfig file (default: $KUBECONFIG or ~/.kube/config).")
KUBE_CONTEXT = typer.Option(None, "--context", help="KubeRay: kubeconfig context.")


def _kuberay_spec(path: Optional[Path]) -> bool:
    from raytf.cluster.spec import spec_provider

    return path is not None and spec_provider(path) == "kuberay"


def _recorded_provider() -> str | None:
    from raytf.cluster.record import load_cluster_record

    record = load_cluster_record()
    return record.get("provider") if record else None


@app.command()
@command
def up(
    cluster: Optional[Path] = typer.Option(None, "--cluster", "-c", help="Cluster spec YAML (cluster-configs/). Default: an embedded local Ray head."),
    dry_run: bool = typer.Option(False, "--dry-run", help="KubeRay: print the RayCluster manifest as YAML and touch nothing."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds to wait until the cluster is ready (local: 90, KubeRay: 600)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="Local: CPUs the head offers (default: this machine's cores)."),
    warm: Optional[int] = typer.Option(None, "--warm", min=0, help="Warm processes per node (KubeRay: per pod with CPUs), "
                                       "with TensorFlow imported, that runs take as their actors (default: the node's "
                                       "CPUs + 1; 0: none)."),
    kubeconfig: Optional[str] = KUBECONFIG,
    context: Optional[str] = KUBE_CONTEXT,
) -> None:
    """Bring up a Ray cluster and remember it for the other commands.

    Without --cluster: a real Ray head on this machine, dashboard on 127.0.0.1, and a warm pool of
    processes that have TensorFlow imported, so a run's first step comes in seconds. Running it
    twice reports the running cluster (and sets the pool to --warm) instead of starting another.
    """
    if _kuberay_spec(cluster):
        from raytf.cluster.kuberay import commands as kuberay

        kuberay.up(cluster, dry_run=dry_run, timeout=timeout or 600.0, kubeconfig=kubeconfig, context=context, console=out,
                   warm=warm)
        return
    if dry_run:
        raise ClusterError("--dry-run renders a KubeRay manifest; the embedded cluster has none.", "Pass --cluster with a KubeRay spec, e.g. cluster-configs/kuberay-cpu.yaml.")
    from raytf.cluster.connection import up_local
    from raytf.cluster.spec import load_local_spec

    spec = load_local_spec(cluster) if cluster else None
    cpus = num_cpus or (spec.num_cpus if spec else None)
    wait = timeout or (spec.timeout_seconds if spec else 90.0)
    with err.status("Starting a local Ray head (dashboard on 127.0.0.1)..."):
        local, started = up_local(num_cpus=cpus, timeout=wait)
    verb = "Started" if started else "Already running:"
    out.print(f"{verb} local Ray cluster (pid {local.pid}, {local.num_cpus} CPUs).")
    out.print(f"  Ray address: {local.gcs_address}")
    out.print(f"  Dashboard:   {local.dashboard_url}")
    if local.token_path:
        out.print(f"  Token:       {local.token_path} (the dashboard asks for its contents)")
    if started or warm is not None:
        _warm_pool(local, warm)
    else:
        out.print("  Warm pool:   as it was (`raytf status` shows it; `raytf up --warm N` resizes it)")
    out.print("Train on it with `raytf train CONFIG`; stop it with `raytf down`.")


def _warm_pool(local, per_node: Optional[int]) -> None:
    """Start (or resize) the warm pool of the local cluster (raytf.pool)."""
    from raytf.cluster.connection import connect
    from raytf.pool.start import ensure_pool

    with err.status("Starting the warm pool..."), connect(local.gcs_address):
        size = ensure_pool(per_node)
    hosts = size.started + size.kept
    if not hosts:
        out.print("  Warm pool:   off" + (f" ({size.stopped} processes stopped)" if size.stopped else "")
                  + "; runs start their actors afresh.")
        return
    out.print(f"  Warm pool:   {hosts} processes on {size.nodes} node(s)"
              + (f", {size.started} importing TensorFlow now (`raytf status` says when they are ready)" if size.started else "")
              + (f", {size.stopped} stopped" if size.stopped else ""))


@app.command()
@command
def down(
    cluster: Optional[Path] = SPEC_OF_CLUSTER,
    timeout: float = typer.Option(300.0, "--timeout", help="KubeRay: seconds to wait until the cluster is gone."),
    kubeconfig: Optional[str] = KUBECONFIG,
    context: Optional[str] = KUBE_CONTEXT,
) -> None:
    """Stop the cluster `raytf up` started (and nothing else)."""
    if _kuberay_spec(cluster) or _recorded_provider() == "kuberay":
        from raytf.cluster.kuberay import commands as kuberay

        kuberay.down(cluster, timeout=timeout, kubeconfig=kubeconfig, context=context, console=out)
        return
    from raytf.cluster.connection import down_local

    with err.status("Stopping the local Ray cluster..."):
        stopped = down_local()
    if stopped:
        out.print(f"Stopped the local Ray cluster at {stopped.gcs_address}.")
    else:
        out.print("No raytf cluster is running; nothing to stop.")


@app.command()
@command
def status(
    cluster: Optional[Path] = SPEC_OF_CLUSTER,
    kubeconfig: Optional[str] = KUBECONFIG,
    context: Optional[str] = KUBE_CONTEXT,
) -> None:
    """Show whether a cluster is up: address, dashboard, nodes and CPU/GPU resources."""
    if _kuberay_spec(cluster) or _recorded_provider() == "kuberay":
        from raytf.cluster.kuberay import commands as kuberay

        kuberay.status(cluster, kubeconfig=kubeconfig, context=context, console=out)
        return
    from raytf.cluster.connection import recorded_local_cluster

    local = recorded_local_cluster()
    if local is None:
        out.print("No raytf cluster is up. Start one with `raytf up` (`raytf train` starts one per run otherwise).")
        raise typer.Exit(1)
    from raytf.cluster.local import nodes

    try:
        node_list = nodes(local.dashboard_url)
    except OSError as error:
        raise ClusterError(f"The local cluster's dashboard at {local.dashboard_url} does not answer ({error}).",
                           "Restart the cluster: `raytf down` then `raytf up`.") from None
    out.print(f"Local Ray cluster: up for {time.time() - local.started_at:,.0f} s (pid {local.pid})")
    out.print(f"  Ray address: {local.gcs_address}")
    out.print(f"  Dashboard:   {local.dashboard_url}")
    table = Table("node", "state", "CPU", "GPU", "memory")
    for node in node_list:
        res = node.get("resources_total") or {}
        table.add_row(
            node.get("node_ip", "?") + (" (head)" if node.get("is_head_node") else ""), node.get("state", "?"),
            f"{res.get('CPU', 0):g}", f"{res.get('GPU', 0):g}", f"{res.get('memory', 0) / 2**30:.1f} GiB",
        )
    out.print(table)
    _print_runs(local)


def _print_runs(local) -> None:
    from raytf.cluster.run_status import activity, add_metrics

    seen = activity(local.dashboard_url)
    if seen.pool:
        table = Table("pool process", "node", "state", "pid", "playing", title="warm pool (`raytf up --warm N`)")
        for host in seen.pool:
            state = "importing TensorFlow" if host.state in ("PENDING_CREATION", "RESTARTING") else host.state.lower()
            table.add_row(host.name.split(":", 1)[1], host.node, state, str(host.pid or "-"), host.playing or "idle")
        out.print(table)
    runs = seen.runs
    if not runs:
        out.print("No raytf run is in progress.")
        return
    add_metrics(runs, f"http://127.0.0.1:{local.metrics_port}/metrics")
    table = Table("run", "workers", "parameter servers", "step", "loss", "samples/s", title="runs in progress")
    for run in runs.values():
        table.add_row(
            run.name, str(run.workers), str(run.servers), "-" if run.step is None else str(run.step),
            "-" if run.loss is None else f"{run.loss:.4f}",
            "-" if run.samples_per_second is None else f"{run.samples_per_second:,.0f}",
        )
    out.print(table)


JOB_ID = typer.Argument(None, help="The Ray job's id, as `raytf train --submit` printed it (default: the newest raytf job).")


@app.command()
@command
def logs(
    job: Optional[str] = JOB_ID,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the run ends (as `raytf attach`)."),
    kubeconfig: Optional[str] = KUBECONFIG,
    context: Optional[str] = KUBE_CONTEXT,
) -> None:
    """Print the logs of a run submitted to the cluster (`raytf train --submit`; on KubeRay, every run)."""
    _job_logs(job, follow, kubeconfig, context)


@app.command()
@command
def attach(
    job: Optional[str] = JOB_ID,
    kubeconfig: Optional[str] = KUBECONFIG,
    context: Optional[str] = KUBE_CONTEXT,
) -> None:
    """Follow a detached run's logs until it ends (Ctrl-C detaches again); exits with the run's outcome."""
    _job_logs(job, True, kubeconfig, context)


def _job_logs(job: Optional[str], follow: bool, kubeconfig: Optional[str], context: Optional[str]) -> None:
    if _recorded_provider() == "kuberay":
        from raytf.cluster.kuberay import commands as kuberay

        code = kuberay.logs(job, follow=follow, console=out, kubeconfig=kubeconfig, context=context)
    else:
        from raytf.cluster.connection import recorded_local_cluster
        from raytf.cluster.jobs import job_logs

        local = recorded_local_cluster()
        if local is None:
            raise ClusterError("No raytf cluster is up, so there is no submitted run to show.",
                               "Runs submitted with `raytf train --submit` live on the cluster `raytf up` started.")
        code = job_logs(local.dashboard_url, job, console=out, follow=follow)
    if code:
        raise typer.Exit(code)


@app.command()
@command
def dashboard(
    cluster: Optional[Path] = SPEC_OF_CLUSTER,
    open_browser: bool = typer.Option(False, "--open", help="Also open it in a web browser."),
    port: int = typer.Option(8265, "--port", help="KubeRay: local port of the port-forward."),
    kubeconfig: Optional[str] = KUBECONFIG,
    context: Optional[str] = KUBE_CONTEXT,
) -> None:
    """Print the Ray dashboard URL (KubeRay: port-forward it to 127.0.0.1 until Ctrl-C)."""
    if _kuberay_spec(cluster) or _recorded_provider() == "kuberay":
        from raytf.cluster.kuberay import commands as kuberay

        kuberay.dashboard(cluster, port=port, kubeconfig=kubeconfig, context=context, console=out)
        return
    from raytf.cluster.connection import recorded_local_cluster

    local = recorded_local_cluster()
    if local is None:
        raise ClusterError("No raytf cluster is up, so there is no dashboard to show.", "Start one with `raytf up`.")
    out.print(local.dashboard_url)
    from raytf.cluster.connection import dashboard_login_hint

    hint = dashboard_login_hint(local)
    if hint:
        err.print(hint)  # stderr: stdout stays the bare URL, for scripts
    if open_browser:
        import webbrowser

        webbrowser.open(local.dashboard_url)


@app.command()
@command
def env(
    unset: bool = typer.Option(False, "--unset", help="Print the commands that undo the exports instead."),
) -> None:
    """Print shell exports that point your own tools at the cluster `raytf up` started.

    eval "$(raytf env)" and then `ray status`, `ray job logs ID`, or `python -c "import ray; ray.init()"`
    use that cluster: its address on 127.0.0.1 and its token (by file path; the token is never printed).
    In Python, `raytf.connect()` does the same for the running process.
    """
    from raytf.cluster.attach import current_cluster, ray_env, shell_exports, shell_unsets

    variables = ray_env(current_cluster())
    out.print(shell_unsets(variables) if unset else shell_exports(variables), soft_wrap=True, markup=False)


class _NegativeNumbersAreArguments(typer.core.TyperCommand):
    """Click reads `raytf scale workers -1` as an unknown option `-1`; pass negative numbers on as
    arguments instead, so that the replica count's own check (min=0) names the problem."""

    def parse_args(self, ctx, args):
        numbers = [arg for arg in args if arg[1:].isdigit() and arg.startswith("-")]
        if numbers and "--" not in args:
            args = [arg for arg in args if arg not in numbers] + ["--", *numbers]
        return super().parse_args(ctx, args)


@app.command(cls=_NegativeNumbersAreArguments)
@command
def scale(
    group: str = typer.Argument(..., help="Worker group name from the cluster spec."),
    replicas: int = typer.Argument(..., min=0, help="Desired number of pods in the group."),
    cluster: Optional[Path] = SPEC_OF_CLUSTER,
    kubeconfig: Optional[str] = KUBECONFIG,
    context: Optional[str] = KUBE_CONTEXT,
) -> None:
    """KubeRay: set a worker group's replica count."""
    if not _kuberay_spec(cluster) and _recorded_provider() != "kuberay":
        raise ClusterError("`raytf scale` changes a KubeRay worker group; the current cluster is not a KubeRay cluster.",
                           "Bring one up with `raytf up --cluster cluster-configs/kuberay-cpu.yaml`.")
    from raytf.cluster.kuberay import commands as kuberay

    kuberay.scale(group, replicas, cluster, kubeconfig=kubeconfig, context=context, console=out)


# -- training ------------------------------------------------------------------------------


@app.command()
@command
def train(
    config: Path = typer.Argument(..., help="Training config YAML (see examples/digits.yaml)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config key: --set distribution.mode=async (dotted path, YAML value). Repeatable."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray address to train on (default: the cluster `raytf up` started, else an embedded one for this run)."),
    plain: bool = typer.Option(False, "--plain", help="Progress as plain lines even on a terminal."),
    submit: bool = typer.Option(False, "--submit", help="Run as a Ray Job on the cluster `raytf up` started (shown in the dashboard's Jobs view). Always on for KubeRay clusters."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in output_dir (parameters, optimizer state, step)."),
    restart: bool = typer.Option(False, "--restart", help="Delete the checkpoints in output_dir and start over."),
    trace: bool = typer.Option(False, "--trace", help="Record every actor's phases per step into output_dir/trace.json "
                               "(Chrome trace format: open it in ui.perfetto.dev); the same as --set trace.enabled=true."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show TensorFlow's native logs (CUDA probes, "
                                 "absl and oneDNN notices) from the driver and every actor, and Ray's INFO logs."),
    cluster: Optional[Path] = typer.Option(None, "--cluster", "-c", help="KubeRay spec: run once as a RayJob on a cluster "
                                           "that is deleted when the run ends (no `raytf up` needed)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="With --cluster: print the RayJob as YAML and touch nothing."),
    ttl: Optional[int] = typer.Option(None, "--ttl", min=0, help="With --cluster: seconds KubeRay keeps the cluster after "
                                      "the job ends (default: the spec's rayjob.ttl_seconds_after_finished, 300)."),
    on_interrupt: str = typer.Option("ask", "--on-interrupt", help="With --cluster: what Ctrl-C does once the job runs: "
                                     "ask, stop (delete the RayJob and its cluster) or detach (leave it running). "
                                     "Without a terminal, ask detaches."),
    kubeconfig: Optional[str] = KUBECONFIG,
    context: Optional[str] = KUBE_CONTEXT,
) -> None:
    """Train a Keras model with parameter servers and workers as Ray actors.

    Ctrl-C (or SIGTERM) stops at the next step and writes a checkpoint; continue with --resume.
    """
    if verbose:
        _show_native_logs()
    if trace:
        set_ = [*set_, "trace.enabled=true"]
    if cluster is not None or dry_run:
        _train_rayjob(config, set_, cluster, dry_run=dry_run, ttl=ttl, on_interrupt=on_interrupt, kubeconfig=kubeconfig,
                      context=context, flags=[flag for flag, on in (("--resume", resume), ("--restart", restart),
                                                                    ("--verbose", verbose)) if on],
                      conflicts=[name for name, on in (("--address", address is not None), ("--submit", submit)) if on])
        return
    from raytf.config import load_config
    from raytf.exchange.policies import policy_for

    cfg = load_config(config, set_)  # config errors before anything heavy starts
    if address is None and (submit or _recorded_provider() == "kuberay"):
        _submit_train(config, set_, cfg, [flag for flag, on in (("--resume", resume), ("--restart", restart), ("--verbose", verbose)) if on])
        return
    if submit:
        raise ClusterError("--submit sends the run to the cluster `raytf up` started; --address connects directly instead.", "Drop one of --submit and --address.")
    out.print(f"raytf: training '{cfg.name}' ({cfg.distribution.workers} workers, "
              f"{cfg.distribution.parameter_servers} parameter servers, {policy_for(cfg.distribution).describe()}) for "
              + (f"{cfg.epochs} epochs" if cfg.epochs is not None else f"{cfg.steps} steps"))
    from raytf.driver.fit import fit
    from raytf.observe.progress import make_progress
    from raytf.observe.startup import process_start_time

    progress = make_progress(cfg.steps or 0, console=out, plain=plain or None)  # epochs: steps known once the data is
    try:
        summary = fit(cfg, address=address, progress=progress, on_event=lambda message: out.print(message),
                      resume=resume, restart=restart, started_at=process_start_time())
    except Interrupted as stopped:
        overrides = "".join(f" --set {shlex.quote(item)}" for item in set_)
        raise Interrupted(stopped.problem, f"Continue with: raytf train {shlex.quote(str(config))}{overrides} --resume") from None
    finally:
        progress.close()
    print_summary(summary)


def _train_rayjob(config: Path, overrides: List[str], cluster: Optional[Path], *, dry_run: bool, ttl: Optional[int],
                  on_interrupt: str, kubeconfig: Optional[str], context: Optional[str], flags: List[str],
                  conflicts: List[str]) -> None:
    """One run as a KubeRay RayJob whose cluster is deleted after it (raytf/cluster/kuberay/oneshot.py)."""
    if cluster is None or not _kuberay_spec(cluster):
        raise ClusterError("--cluster for `raytf train` (and --dry-run) takes a KubeRay cluster spec: the run becomes a RayJob.",
                           "Pass e.g. --cluster cluster-configs/kuberay-cpu.yaml; for a local cluster use `raytf up` then `raytf train`.")
    if conflicts:
        raise ClusterError(f"--cluster runs on a new KubeRay cluster; {' and '.join(conflicts)} pick another cluster.",
                           f"Drop {' and '.join(conflicts)}.")
    if on_interrupt not in ("ask", "stop", "detach"):
        raise ClusterError(f"--on-interrupt takes ask, stop or detach, not '{on_interrupt}'.", "Pass one of ask, stop, detach.")
    from raytf.cluster.kuberay import oneshot

    code = oneshot.train(config, overrides, cluster, flags=flags, dry_run=dry_run, ttl_seconds=ttl,
                         on_interrupt=on_interrupt, kubeconfig=kubeconfig, context=context, console=out, err_console=err)  # type: ignore[arg-type]
    if code:
        raise typer.Exit(code)


def _submit_train(config: Path, overrides: List[str], cfg, flags: List[str]) -> None:
    """Submit the run as a Ray Job to the recorded cluster (KubeRay: through a port-forward)."""
    from raytf.cluster.jobs import submit_training_job

    codes: list[int] = []
    if _recorded_provider() == "kuberay":
        from raytf.cluster.kuberay import commands as kuberay

        # Placement, the shared-storage check, the token and the runtime_env that brings raytf live there.
        codes.append(kuberay.train(config, overrides, flags, console=out))
    else:
        from raytf.cluster.connection import recorded_local_cluster

        local = recorded_local_cluster()
        if local is None:
            raise ClusterError("--submit needs a running cluster to submit the job to, and none is up.",
                               "Start one with `raytf up`, or train without --submit (an embedded cluster is started for the run).")
        if not Path(cfg.output_dir).is_absolute():  # same machine: keep the results where a direct run puts them
            overrides = [*overrides, f"output_dir={json.dumps(str(Path(cfg.output_dir).resolve()))}"]  # JSON is YAML
        codes.append(submit_training_job(local.dashboard_url, str(config), overrides, working_dir=os.getcwd(), console=out,
                                         flags=flags))
    if codes and codes[0]:
        raise typer.Exit(codes[0])


def print_summary(summary: dict) -> None:
    table = Table(title="raytf summary", show_header=False)
    rows = [
        ("mode", summary.get("exchange", summary["mode"])),
        ("workers / parameter servers", f"{summary['workers']} / {summary['parameter_servers']}"),
        ("exchange", summary["transport"]),
        ("steps per worker", str(summary["steps"])),
        ("samples/s (steady state)", f"{summary['samples_per_second']:,.0f}"),
        ("final training loss", f"{summary['final_loss']:.4f}"),
        ("start-up / training / total", f"{summary['startup_seconds']:.1f} s / {summary['train_seconds']:.1f} s / {summary['wall_seconds']:.1f} s"),
    ]
    if summary["staleness"]["max"]:
        rows.append(("staleness mean / max", f"{summary['staleness']['mean']:.2f} / {summary['staleness']['max']}"))
    if summary["gradients_dropped"]["total"]:
        rows.append(("gradients applied / dropped", f"{summary['gradients_applied']['total']:,} / "
                                                    f"{summary['gradients_dropped']['total']:,}"))
    if "clock_skew_max" in summary:
        rows.append(("clock skew max / bound", f"{summary['clock_skew_max']} / {summary['staleness_bound']} "
                                               f"(waited {summary['bound_wait_seconds']['total']:.1f} s)"))
    if summary.get("resumed_from_step"):
        rows.append(("resumed from step", str(summary["resumed_from_step"])))
    if summary.get("restarts"):
        rows.append(("actors restarted", ", ".join(f"{r['role']} {r['index']} (step {r['step']})" for r in summary["restarts"])))
    if summary.get("rollbacks"):
        rows.append(("rolled back", ", ".join(f"step {r['at_step']} -> {r['to_step']}" for r in summary["rollbacks"])))
    if summary.get("nonfinite_skipped"):
        rows.append(("non-finite gradients skipped", str(summary["nonfinite_skipped"])))
    for sparse in summary.get("sparse", {}).get("tables", []):
        if sparse.get("dynamic"):
            rows.append((f"rows of '{sparse['layer']}' live / created / evicted",
                         f"{sparse.get('live', 0):,} / {sparse.get('created', 0):,} / {sparse.get('evicted', 0):,}"
                         f" ({sparse.get('not_admitted', 0):,} sightings not admitted)"))
    rows += [(f"eval {name}", f"{value:.4f}") for name, value in summary["eval"].items()]
    rows.append(("model", summary["model_path"]))
    rows.append(("summary", str(Path(summary["model_path"]).with_name("summary.json"))))
    if summary.get("checkpoint"):
        rows.append(("checkpoint", summary["checkpoint"]))
    best = summary.get("best_checkpoint")
    if best:
        rows.append((f"best {best['metric']}", f"{best['value']:.4f} at step {best['step']}: {best['checkpoint']}"))
    if summary.get("trace"):
        rows.append(("trace", f"{summary['trace']} (open in ui.perfetto.dev)"))
    rows.append(("tensorboard", f"tensorboard --logdir {summary['tensorboard_dir']}"))
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


@app.command("export")
@command
def export(
    output_dir: Path = typer.Argument(..., help="A finished run's output_dir (holding model.keras), or a .keras file."),
    savedmodel: Path = typer.Option(..., "--savedmodel", help="Write a TensorFlow SavedModel (for TF Serving) here."),
) -> None:
    """Export a trained model for serving: a SavedModel whose `serve` signature takes the model's inputs."""
    from raytf.driver.export import export_savedmodel

    written, ragged = export_savedmodel(output_dir, savedmodel)
    out.print(f"SavedModel written to {written} (signature `serve`).")
    if ragged:
        out.print(f"Its ragged inputs: a dense tensor padded with '' (strings) or -1 (int keys): {', '.join(ragged)}.",
                  markup=False)


@app.command("trace")
@command
def trace_summary(
    path: Path = typer.Argument(Path("."), help="A trace.json from `raytf train --trace`, or the output_dir holding it."),
    from_step: Optional[int] = typer.Option(None, "--from-step", min=0,
                                            help="Read the steps from this one on (default: all but the first tenth)."),
) -> None:
    """Where each actor's step time goes: per phase of a recorded timeline, the mean and median
    duration, CPU time and page faults (the numbers behind a trace you would open in Perfetto)."""
    from raytf.observe.trace import phase_stats, read_trace, stale_trace_note

    trace = read_trace(path)
    first, rows = phase_stats(trace, from_step)
    table = Table("track", "phase", "n", "mean", "median", "cpu", "proc cpu", "faults",
                  title=f"phases from step {first} on (ms; cpu: the phase's thread, proc cpu: its whole process; "
                        "faults: minor page faults)")
    for r in rows:
        table.add_row(r.track, r.phase, str(r.count), f"{r.mean_ms:.2f}", f"{r.median_ms:.2f}", f"{r.cpu_ms:.2f}",
                      f"{r.process_cpu_ms:.2f}", f"{r.minor_faults:.0f}")
    out.print(table)
    note = stale_trace_note(path, trace)
    if note:
        err.print(note, soft_wrap=True)


def main() -> None:
    # TensorFlow's C++ start-up chatter (CUDA probing on CPU-only machines) is noise in a CLI.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    app()


if __name__ == "__main__":
    main()
